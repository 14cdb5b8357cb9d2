"""Row checks, the torch Dataset over a table, and the collate function that builds a Batch.

Batch contract: {"inputs": {key: Tensor | dict}, "features": {key: Tensor}, "present": {key: BoolTensor},
"target": Tensor (optional), "row": LongTensor}. An input appears under "features" when its frozen
encoder's output was precomputed (feature cache), otherwise under "inputs" as encoder input.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from polymodal.data.preprocess import Preprocessor
from polymodal.data.readers import is_missing, resolve_path
from polymodal.data.stats import number_problem, numbers, usable
from polymodal.data.text import encode_texts
from polymodal.data.timeseries import load_series_input, series_placeholder, series_problems, series_value
from polymodal.data.transforms import load_audio_features, load_image
from polymodal.data.video import check_video, load_video, video_placeholder
from polymodal.errors import DataError
from polymodal.problem_types import MULTILABEL, MULTITASK
from polymodal.types import AUDIO, IMAGE, TABULAR, TEXT, TIMESERIES, VIDEO


@dataclass
class Problem:
    row: int
    column: str
    message: str


def check_rows(df: pd.DataFrame, prep: Preprocessor, with_target: bool = True,
               decoded: dict[str, dict[str, np.ndarray]] | None = None) -> list[Problem]:
    """Cheap checks of every row without training: media files exist and open, numbers parse, labels known.

    Image headers are opened (not fully decoded) and audio headers read, so this costs far less than
    decoding; full decode errors are caught again, with the same location, when features are computed.
    `decoded` (a dict to fill; for a few rows to predict): images are decoded to their encoder's input array
    instead, kept there as {input key: {path: array}} for TableDataset, so that each image is read once.
    """
    import soundfile as sf
    from PIL import Image

    base = df.attrs.get("base_dir", os.getcwd())
    problems: list[Problem] = []
    for key, spec in prep.inputs.items():
        if spec.modality not in (IMAGE, AUDIO, VIDEO, TIMESERIES) or spec.config.get("source") == VIDEO:
            continue  # a video's sound track is checked with the video
        col = spec.columns[0]
        if col not in df.columns:
            problems.append(Problem(-1, col, "column is missing from the table"))
            continue
        if spec.modality == TIMESERIES:
            problems += [Problem(r, col, m) for r, m in series_problems(df[col], base, spec.config)]
            continue
        checked: dict[str, str | None] = {}
        arrays = decoded.setdefault(key, {}) if decoded is not None and spec.modality == IMAGE else None
        for row, v in zip(df.index, df[col]):
            if is_missing(v):
                continue
            path = resolve_path(v, base)
            if path not in checked:
                checked[path] = _check_media(path, spec.modality, Image, sf) if arrays is None else \
                    _decode_image(path, spec.config, arrays)
            if checked[path]:
                problems.append(Problem(int(row), col, checked[path]))
    if TABULAR in prep.inputs:
        for col in prep.inputs[TABULAR].config["numeric"]:
            if col not in df.columns:
                continue
            ok = usable(numbers(df[col]))
            for row, v, o in zip(df.index, df[col], ok):
                if not is_missing(v) and not o:
                    problems.append(Problem(int(row), col, number_problem(v)))
    if with_target and prep.schema.problem_type == MULTITASK:
        # multi-task: a missing label (or an unseen class) only drops the row from that task's loss/metrics
        for label in prep.schema.labels:
            if label not in df.columns:
                problems.append(Problem(-1, label, "label column is missing from the table"))
    elif with_target:
        label = prep.schema.label
        if label not in df.columns:
            problems.append(Problem(-1, label, "label column is missing from the table"))
        else:
            for row in df.index[[is_missing(v) for v in df[label]]]:
                problems.append(Problem(int(row), label, "label is missing"))
            if prep.classes and prep.schema.problem_type != MULTILABEL:
                known = set(prep.classes)
                for row, v in zip(df.index, df[label]):
                    if not is_missing(v) and str(v) not in known:
                        problems.append(Problem(int(row), label, f"label {v!r} was not seen in training"))
    return problems


def _decode_image(path: str, cfg: dict, arrays: dict[str, np.ndarray]) -> str | None:
    """The image's encoder input (inference: no augmentation) into `arrays`, or what is wrong with the file
    (the messages `_check_media` gives)."""
    if not os.path.exists(path):
        return f"file not found: {path}"
    try:
        arrays[path] = load_image(path, cfg["image_size"], cfg["mean"], cfg["std"])
    except DataError as exc:
        return exc.detail
    return None


def _check_media(path: str, modality: str, Image, sf) -> str | None:
    if not os.path.exists(path):
        return f"file not found: {path}"
    if modality == VIDEO:
        return check_video(path)
    try:
        if modality == IMAGE:
            with Image.open(path) as im:
                im.verify()
        else:
            info = sf.info(path)
            if info.frames == 0:
                return f"audio file has no samples: {path}"
    except Exception as exc:  # any decoder error means the file is unusable
        if modality == AUDIO:  # formats libsndfile lacks are tried with librosa at load time
            return None if path.lower().endswith((".mp3", ".m4a")) else f"cannot read audio {path}: {exc}"
        return f"cannot decode image {path}: {exc}"
    return None


def unlabeled(df: pd.DataFrame, labels: list[str]) -> list[Problem]:
    """Rows with no label at all (multi-task: none of them); they cannot train anything."""
    for lab in labels:
        if lab not in df.columns:
            return [Problem(-1, lab, "label column is missing from the table")]
    msg = "label is missing" if len(labels) == 1 else "every label is missing"
    return [Problem(int(r), labels[0], msg) for r, *vs in zip(df.index, *(df[lab] for lab in labels))
            if all(is_missing(v) for v in vs)]


def raise_or_drop(df: pd.DataFrame, problems: list[Problem], on_bad_rows: str, can_skip: bool = True
                  ) -> tuple[pd.DataFrame, list]:
    """With on_bad_rows='error' raise on the first problem (saying how many more); with 'skip' drop the rows.
    `can_skip=False` where the command has no --on-bad-rows (predict, evaluate): the message does not offer it."""
    if not problems:
        return df, []
    source = df.attrs.get("source", "<DataFrame>")
    whole_column = [p for p in problems if p.row < 0]
    if on_bad_rows == "error" or whole_column:
        p = (whole_column or problems)[0]
        skip = ", --on-bad-rows skip drops such rows" if can_skip else ""
        more = f" ({len(problems) - 1} more problems; `polymodal validate` lists them all{skip})" \
            if len(problems) > 1 else ""
        raise DataError(p.message + more, file=source, row=None if p.row < 0 else p.row, column=p.column)
    bad = sorted({p.row for p in problems})
    out = df.drop(index=bad)
    out.attrs.update(df.attrs)
    if len(out) == 0:
        raise DataError("every row has a problem; nothing is left to use", file=source)
    return out, problems


class TableDataset(Dataset):
    """Rows of a table → per-input encoder inputs or precomputed features, presence masks and targets.

    `features`: {key: (features (N, ...), present (N,))}, or (features, present, views (V, N, ...)) for an input
    with cached augmented views (`--cached-views`): a training row then reads one of the V + 1 (plain or a view)
    per epoch, drawn from (seed, epoch, row) like every other augmentation. `decoded`: {input key: {path:
    array}} of images `check_rows` already decoded to their encoder input; used instead of decoding again
    (never when augmenting)."""

    def __init__(self, df: pd.DataFrame, prep: Preprocessor, features: dict[str, tuple] | None = None,
                 train: bool = False, with_target: bool = True, augment: bool = True, seed: int = 0,
                 text_augment: float = 0.0, decoded: dict[str, dict[str, np.ndarray]] | None = None) -> None:
        self.prep, self.train, self.augment, self.seed = prep, train, augment and train, seed
        self.decoded = (decoded or {}) if not self.augment else {}  # check_rows' decoded images: not decoded again
        self.text_augment = text_augment if self.augment else 0.0
        features = features or {}
        self.features = {k: (f[0], f[1]) for k, f in features.items()}
        self.views = {k: f[2] for k, f in features.items() if len(f) > 2} if self.augment else {}
        self.n = len(df)
        self._batch_images: dict[str, dict[str, np.ndarray]] | None = None  # __getitems__: this batch's images
        self.source = df.attrs.get("source", "<DataFrame>")
        self.rows = np.asarray(df.index)
        base = df.attrs.get("base_dir", os.getcwd())
        self.values: dict[str, list] = {}
        for key, spec in prep.inputs.items():
            if key in self.features or spec.modality == TABULAR:
                continue
            col = spec.columns[0]
            vals = df[col].tolist() if col in df.columns else [None] * self.n
            if spec.modality in (IMAGE, AUDIO, VIDEO):
                vals = [None if is_missing(v) else resolve_path(v, base) for v in vals]
            elif spec.modality == TIMESERIES:
                vals = [series_value(v, base) for v in vals]
            else:
                vals = [None if is_missing(v) else str(v) for v in vals]
            self.values[key] = vals
        self.tabular = prep.tabular_arrays(df) if TABULAR in prep.inputs and TABULAR not in self.features \
            else None
        self.target = prep.encode_target(df) if with_target else None

    def __len__(self) -> int:
        return self.n

    def text_lengths(self) -> np.ndarray | None:
        """Characters of raw (uncached) text per row, summed over text inputs: the length-bucketing key (a
        proxy for token counts that needs no tokenizer pass). None when every text input is cached."""
        texts = [vals for key, vals in self.values.items() if self.prep.inputs[key].modality == TEXT]
        if not texts:
            return None
        return np.array([sum(len(v[i]) if v[i] is not None else 0 for v in texts) for i in range(self.n)])

    def __getitems__(self, indices: list[int]):
        """Batched fetch (DataLoader calls this with a batch's indices): one array gather when nothing needs
        decoding, else the per-row items for the Collator. Outside training, rows of the batch that name the
        same image share one decoded array (read once), which the Collator then stacks once."""
        if not self.values:
            return _gather_batch(self, indices)
        if self.train:  # training batches keep a row per image (BatchNorm statistics, augmentation)
            return [self[i] for i in indices]
        self._batch_images = {}
        try:
            return [self[i] for i in indices]
        finally:
            self._batch_images = None

    def __getitem__(self, index: int) -> dict:
        # An EpochSampler passes epoch * n + i, so augmentation is a function of (seed, epoch, row) alone.
        epoch, i = divmod(int(index), self.n)
        rng = np.random.default_rng((self.seed, epoch, i)) if self.augment else None
        item: dict = {"row": int(self.rows[i]), "inputs": {}, "features": {}, "present": {}}
        for key, (feats, present) in self.features.items():
            item["features"][key] = feats[i]
            item["present"][key] = bool(present[i])
            if key in self.views:
                view = int(rng.integers(0, len(self.views[key]) + 1))  # 0: the plain image's features
                if view:
                    item["features"][key] = self.views[key][view - 1, i]
        for key, vals in self.values.items():
            spec, v = self.prep.inputs[key], vals[i]
            item["present"][key] = v is not None
            try:
                if v is None and spec.modality in (IMAGE, AUDIO, VIDEO, TIMESERIES):
                    item["inputs"][key] = placeholder(spec.modality, spec.config)
                elif spec.modality == IMAGE and v in self.decoded.get(key, ()):
                    item["inputs"][key] = self.decoded[key][v]
                elif spec.modality == IMAGE:
                    # outside training, __getitems__ shares one decoded array among the batch's rows of a file
                    shared = None if self._batch_images is None else self._batch_images.setdefault(key, {})
                    x = None if shared is None else shared.get(v)
                    if x is None:
                        x = load_image(v, spec.config["image_size"], spec.config["mean"], spec.config["std"],
                                       self.augment, rng)
                        if shared is not None:
                            shared[v] = x
                    item["inputs"][key] = x
                elif spec.modality == AUDIO:
                    x = load_audio_features(v, spec.config, self.augment, rng)
                    if x is None:  # a video without sound: its sound-track input is missing
                        x, item["present"][key] = placeholder(AUDIO, spec.config), False
                    item["inputs"][key] = x
                elif spec.modality == VIDEO:
                    item["inputs"][key] = load_video(v, spec.config, self.augment, rng)
                elif spec.modality == TIMESERIES:
                    item["inputs"][key] = load_series_input(v, spec.config, self.augment, rng)
                elif spec.modality == TEXT and self.text_augment and v is not None:
                    item["inputs"][key] = augment_text(v, self.text_augment, rng)
                else:
                    item["inputs"][key] = v
            except DataError as exc:
                raise DataError(exc.detail, file=self.source, row=int(self.rows[i]), column=spec.columns[0]) \
                    from None
        if self.tabular is not None:
            item["inputs"][TABULAR] = {k: a[i] for k, a in self.tabular.items()}
            item["present"][TABULAR] = True
        if self.target is not None:
            item["target"] = self.target[i]
        return item


def _gather_batch(ds: TableDataset, indices) -> dict:
    """A whole Batch by array indexing, for datasets with nothing to decode (all inputs cached or tabular):
    the per-row `__getitem__` + `Collator` path costs Python work per row and per key, which dominated
    head training on cached features (benchmarks/throughput.py, fusion row)."""
    idx = np.asarray(indices, dtype=np.int64) % ds.n
    batch: dict = {"row": torch.from_numpy(ds.rows[idx].astype(np.int64)), "inputs": {}, "features": {},
                   "present": {}}
    for key, (feats, present) in ds.features.items():
        if key in ds.views:  # per row: the plain features (0) or one of the cached augmented views
            rng = np.random.default_rng((ds.seed, *(int(j) for j in indices)))  # (seed, epoch, rows) decide
            view = rng.integers(0, len(ds.views[key]) + 1, size=len(idx))
            out = np.array(feats[idx])
            for v in np.unique(view[view > 0]):
                out[view == v] = ds.views[key][v - 1, idx[view == v]]
            batch["features"][key] = torch.from_numpy(out)
        else:
            batch["features"][key] = torch.from_numpy(np.ascontiguousarray(feats[idx]))
        batch["present"][key] = torch.from_numpy(np.asarray(present, dtype=bool)[idx])
    if ds.tabular is not None:
        batch["inputs"][TABULAR] = {k: torch.from_numpy(np.ascontiguousarray(a[idx])) for k, a in ds.tabular.items()}
        batch["present"][TABULAR] = torch.ones(len(idx), dtype=torch.bool)
    if ds.target is not None:
        batch["target"] = torch.from_numpy(np.ascontiguousarray(ds.target[idx]))
    return batch


def augment_text(text: str, p: float, rng: np.random.Generator) -> str:
    """Easy data augmentation (Wei & Zou 2019), the two label-safe edits: drop each word with probability
    p (keeping at least one) and swap about p·n random word pairs."""
    words = text.split()
    if len(words) < 2:
        return text
    kept = [w for w in words if rng.random() >= p] or [words[int(rng.integers(len(words)))]]
    for _ in range(int(rng.binomial(len(kept), p))):
        i, j = rng.integers(len(kept), size=2)
        kept[i], kept[j] = kept[j], kept[i]
    return " ".join(kept)


def placeholder(modality: str, cfg: dict) -> np.ndarray:
    """Zeros of an encoder input's shape, standing in for a missing value (its presence bit is False)."""
    if modality == IMAGE:
        return np.zeros((3, cfg["image_size"], cfg["image_size"]), np.float32)
    if modality == VIDEO:
        return video_placeholder(cfg)
    if modality == TIMESERIES:
        return series_placeholder(cfg)
    return np.zeros((cfg["n_mels"], 1), np.float32)


class Collator:
    """Stack items into a Batch; tokenises text here so padding is per batch, not per dataset.

    Image arrays that rows share (the same object: one file decoded once for the batch, at inference) are
    stacked once: `inputs[key]` then holds the U distinct images and `index[key]` (B,) says which one each
    row reads, so the encoder runs U times instead of B (a VQA table asks several questions per image)."""

    def __init__(self, prep: Preprocessor) -> None:
        self.prep = prep

    def __call__(self, items: list[dict] | dict) -> dict:
        if isinstance(items, dict):  # already a Batch (TableDataset.__getitems__ gathered it)
            return items
        # torch.from_numpy(np.array(...)): a third of torch.tensor(list)'s cost, which a one-row predict notices
        batch: dict = {"row": torch.from_numpy(np.array([it["row"] for it in items], dtype=np.int64)), "inputs": {},
                       "features": {}, "present": {}}
        for key in items[0]["present"]:
            batch["present"][key] = torch.from_numpy(np.array([it["present"][key] for it in items], dtype=bool))
        for key in items[0]["features"]:
            batch["features"][key] = torch.from_numpy(np.stack([it["features"][key] for it in items]))
        for key in items[0]["inputs"]:
            vals = [it["inputs"][key] for it in items]
            spec = self.prep.inputs[key]
            if spec.modality == TEXT:  # the tokenizer's padding=True, truncation=True call, set up once
                ids, mask = encode_texts(spec.config["tokenizer"], [v or "" for v in vals],
                                         spec.config.get("max_length", 64))
                batch["inputs"][key] = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
            elif spec.modality == TABULAR:
                batch["inputs"][key] = {k: torch.from_numpy(np.stack([v[k] for v in vals])) for k in vals[0]}
            elif spec.modality in (VIDEO, TIMESERIES):
                batch["inputs"][key] = stack_sequences(vals)
            else:
                if spec.modality == IMAGE:
                    vals, index = _distinct(vals)
                    if index is not None:
                        batch.setdefault("index", {})[key] = index
                batch["inputs"][key] = _stack_media(vals)
        if "target" in items[0]:
            batch["target"] = torch.from_numpy(np.stack([it["target"] for it in items]))
        return batch


def stack_sequences(vals: list[dict]) -> dict[str, torch.Tensor]:
    """Stack {name: array (T, ...)} items (video frames + mask, time-series values + mask), zero-padding the
    first axis to the longest in the batch (padding is False in boolean masks)."""
    out = {}
    for k in vals[0]:
        arrs = [v[k] for v in vals]
        longest = max(a.shape[0] for a in arrs)
        x = np.zeros((len(arrs), longest, *arrs[0].shape[1:]), arrs[0].dtype)
        for i, a in enumerate(arrs):
            x[i, :a.shape[0]] = a
        out[k] = torch.from_numpy(x)
    return out


def _distinct(vals: list) -> tuple[list, torch.Tensor | None]:
    """The distinct arrays (by identity, in order of first use) and each row's position among them; no index
    when every row has its own array."""
    first: dict[int, int] = {}
    index = [first.setdefault(id(v), len(first)) for v in vals]
    if len(first) == len(vals):
        return vals, None
    return list({id(v): v for v in vals}.values()), torch.from_numpy(np.asarray(index, dtype=np.int64))


def _stack_media(vals: list) -> torch.Tensor:
    """Stack arrays, zero-padding the last axis (audio frames) to the longest in the batch."""
    last = max(v.shape[-1] for v in vals)
    out = np.zeros((len(vals), *vals[0].shape[:-1], last), np.float32)
    for i, v in enumerate(vals):
        out[i, ..., :v.shape[-1]] = v
    return torch.from_numpy(out)
