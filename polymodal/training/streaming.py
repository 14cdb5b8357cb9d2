"""`fit_stream`: the fit pipeline over Parquet / WebDataset shards read chunk by chunk (data/streaming.py).

Its prepare stage streams (statistics in one pass, then rows checked, encoded and appended to memory-mapped
stores in a second); training and scoring are the pipeline's shared tail, `train_and_score`.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import lightning as L
import torch

from polymodal.data import shards
from polymodal.data import streaming as st
from polymodal.data.dataset import Problem, check_rows
from polymodal.data.preprocess import Preprocessor
from polymodal.data.readers import keep_rows
from polymodal.data.schema import infer_schema
from polymodal.data.stats import TableStats
from polymodal.encoders.cache import precompute_features
from polymodal.errors import DataError, PolymodalError
from polymodal.problem_types import MULTILABEL, MULTITASK
from polymodal.training.build import build_encoders, build_tabular_encoder, is_frozen, token_inputs
from polymodal.training.config import FitConfig
from polymodal.training.fit import TABLE_RECIPE
from polymodal.training.pipeline import FitResult, Log, Prepared, log_schema, train_and_score, train_device
from polymodal.types import TABULAR


def fit_stream(train, valid, config: FitConfig, run_dir: str | os.PathLike, log: Log = print,
               resume: bool = False) -> FitResult:
    """Train on Parquet or WebDataset shards read `config.chunk_rows` rows at a time.

    The schema comes from the first rows; preprocessing statistics from one pass over the training rows;
    a second pass checks rows, computes frozen features into the feature cache and appends each row's
    features, encoded tabular values and target to files that training reads memory-mapped. Without
    `valid`, a row goes to validation by a seeded hash of its stream position (`streaming.valid_mask`).
    Every encoder but the tabular MLP must be frozen: a trained encoder would need its raw inputs decoded
    again every epoch, which this path does not stream; such inputs are refused before any pass.
    """
    t0 = time.time()
    L.seed_everything(config.seed, workers=True, verbose=False)
    media = shards.media_dir(config.cache_dir)
    readers = {"train": shards.ShardReader(train, config.chunk_rows, media)}
    if valid is not None:
        readers["valid"] = shards.ShardReader(valid, config.chunk_rows, media)
    head = readers["train"].head(shards.SCHEMA_ROWS)
    schema = infer_schema(head, config.label, config.column_types, config.problem_type)
    log(f"  streaming {len(readers['train'].files)} {readers['train'].kind} shard(s) in chunks of at most "
        f"{config.chunk_rows} rows; schema inferred from the first {len(head)} rows")
    del head
    log_schema(schema, log)
    log(f"  problem type: {schema.problem_type}")
    series = schema.of("timeseries")
    if series:
        raise PolymodalError(f"time-series column '{series[0]}' cannot be streamed yet (its per-channel scaling is "
                             "fitted on the whole column): fit without --stream, or drop the column")
    encoders, pre_cfg = build_encoders(schema, config)
    trained = [f"'{k}' ({schema.columns.get(k, 'audio')}, {getattr(e, 'cache_id', type(e).__name__)})"
               for k, e in encoders.items() if not is_frozen(schema.columns.get(k, "audio"), e, config)]
    if trained:
        raise PolymodalError(
            f"streaming needs frozen encoders (their features are computed chunk by chunk into the feature cache), "
            f"but {', '.join(trained)} would train. Freeze them (Python: frozen={{'<modality>': True}}; drop "
            "--finetune), leave those columns out, or fit in memory without --stream")
    split = valid is None

    def parts():
        """(name, rows, problems) for name train/valid: a chunk's rows on each side of the hash split (or the
        train and valid shards in turn), unlabeled rows dropped (or raised) as in the in-memory fit."""
        for reader_name, reader in readers.items():
            for chunk, problems in st.labelled_chunks(reader, schema, config.on_bad_rows):
                if not split:
                    yield reader_name, chunk, problems
                    continue
                in_valid = st.valid_mask(st.positions(chunk), config.seed, config.valid_fraction)
                yield "train", keep_rows(chunk, ~in_valid), problems
                yield "valid", keep_rows(chunk, in_valid), []

    acc = TableStats(schema)
    n_valid = 0
    for name, part, _ in parts():  # pass 1: statistics of the training rows
        if name == "train":
            acc.update(part)
        else:
            n_valid += len(part)
    if split:
        log(f"  split: {acc.rows} train / {n_valid} valid rows (hash of the row's stream position, seed "
            f"{config.seed}, fraction {config.valid_fraction})")
    if n_valid == 0 or acc.rows < 2:
        raise DataError(f"{acc.rows} training and {n_valid} validation rows; stream more rows"
                        + (" or give validation shards" if split else ""), file=str(readers["train"].files[0]))
    prep = Preprocessor.from_stats(acc, pre_cfg, source=str(readers["train"].files[0]))
    log(f"  preprocessing fitted on {acc.rows} training rows in one pass")
    if TABULAR in prep.inputs:
        encoders[TABULAR] = build_tabular_encoder(prep, config)
    for key, enc in encoders.items():
        if key != TABULAR:
            enc.freeze()
    keys = [k for k in encoders if k != TABULAR]
    tokens = token_inputs(config, prep)
    device = train_device(config)
    rank = os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))  # DDP re-runs this in every process
    folder = Path(run_dir) / "stream" / f"rank{rank}"
    stores = {name: st.RowStore(folder / name) for name in ("train", "valid")}
    bad: list[Problem] = []
    stats = {"computed": 0, "reused": 0}
    unseen = 0
    by_class = bool(prep.classes) and schema.problem_type not in (MULTILABEL, MULTITASK)
    # Feature extraction's DataLoaders draw their seeds from the global RNG: fork it, so the head is
    # initialised from the same RNG state as in the in-memory fit (streamed and in-memory runs then agree).
    with torch.random.fork_rng(devices=[]):
        for name, part, problems in parts():  # pass 2: checks, features, encoded rows to disk
            bad += problems
            if name == "valid" and by_class and len(part):
                known = part[schema.label].astype(str).isin(set(prep.classes)).to_numpy()
                unseen += int((~known).sum())
                part = keep_rows(part, known)
            part, _, problems = st.drop_rows(part, check_rows(part, prep), config.on_bad_rows)
            bad += problems
            if not len(part):
                continue
            feats, problems, s = precompute_features(
                part, prep, {k: encoders[k] for k in keys}, keys, config.cache_dir, config.batch_size, device,
                config.num_workers, token_keys=[k for k in keys if k in tokens])
            stats = {k: stats[k] + s[k] for k in stats}
            part, feats, problems = st.drop_rows(part, problems, config.on_bad_rows, feats)
            bad += problems
            if len(part):
                stores[name].append(st.chunk_arrays(part, prep, feats))
    if unseen:
        log(f"  dropped {unseen} validation rows whose label does not occur in training")
    if bad:
        log(f"  skipped {len({(p.file, p.row, p.column) for p in bad})} bad rows (listed in bad_rows.csv)")
    log(f"  feature cache: {stats['computed']} computed, {stats['reused']} reused")
    source = str(readers["train"].files[0])
    data = {n: stores[n].dataset(prep, source) for n in ("train", "valid")}
    if len(data["train"]) == 0 or len(data["valid"]) == 0:
        raise DataError(f"no {'training' if len(data['train']) == 0 else 'validation'} row is left after the row "
                        "checks", file=source)
    log(f"  rows: {len(data['train'])} train / {len(data['valid'])} valid, memory-mapped from {folder}")
    task, model, config = TABLE_RECIPE.build(encoders, prep, config, data["train"], log)
    prepared = Prepared(model, task, prep, config, data, {"train": {}, "valid": {}}, bad, stats, device, t0)
    try:
        return train_and_score(prepared, TABLE_RECIPE, run_dir, log, resume)
    finally:
        del data, prepared
        shutil.rmtree(folder, ignore_errors=True)
