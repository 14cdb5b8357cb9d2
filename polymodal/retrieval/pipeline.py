"""Alignment on tables: train a dual encoder on two columns, evaluate it, index a gallery, search it.

The fronts `polymodal align / evaluate / index / search / zero-shot` and :class:`AlignedModel` call these.

A side (``left`` or ``right``) is one column: image, text or audio paths/strings through the pretrained
encoders of ``polymodal.encoders``, or ``vector`` cells (lists / JSON arrays of numbers, e.g. pre-extracted
features) through a trainable MLP tower. Pretrained towers are locked by default (LiT): their outputs come
from the content-keyed feature cache, so re-running with other settings costs no encoder passes, and only
the projection heads and the temperature learn. ``finetune`` unlocks a tower; its inputs are then decoded
into memory once and the tower trains (without augmentation) at ``lr * encoder_lr_scale``.

Positives: rows sharing a value of ``pair_id`` (e.g. a category) are all positives of each other;
without it, rows with the same left value or the same right value are (a caption used for several images
is a positive of each of them), found as connected groups. The validation split keeps such groups whole
(when there are at least 20 of them).

Run folder: ``align.json`` (config, sides, model id, metrics, history), ``model.safetensors`` (the whole
dual encoder, towers included: it loads offline), ``tokenizers/<side>/`` for text towers, ``README.md``.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from polymodal.data.dataset import Problem, raise_or_drop
from polymodal.data.preprocess import InputSpec, Preprocessor
from polymodal.data.readers import is_missing, read_table, resolve_path
from polymodal.data.schema import Schema, infer_column_type
from polymodal.errors import DataError, PolymodalError
from polymodal.retrieval.align import DualEncoder, Side, VectorTower, encode, train_alignment
from polymodal.retrieval.metrics import cross_modal_metrics
from polymodal.types import AUDIO, CATEGORICAL, ID, IMAGE, TEXT

__all__ = ["ALIGN_CONFIG", "AlignConfig", "AlignedModel", "VECTOR", "is_alignment_run"]

ALIGN_CONFIG = "align.json"
WEIGHTS = "model.safetensors"
VECTOR = "vector"
SIDES: tuple[Side, Side] = ("left", "right")
Log = Callable[[str], None]


@dataclass
class AlignConfig:
    """Everything that defines an alignment run (saved in align.json)."""

    left: str
    right: str
    column_types: dict[str, str] = field(default_factory=dict)  # column → image|text|audio|vector
    encoders: dict[str, str] = field(default_factory=dict)  # modality → encoder name
    encoder_opts: dict[str, dict] = field(default_factory=dict)  # modality → builder options
    finetune: list[str] = field(default_factory=list)  # columns whose pretrained tower is fine-tuned
    pair_id: str | None = None  # rows sharing this column's value are positives of each other
    embed_dim: int = 256
    head_hidden: int | None = None  # None: linear projections (CLIP/LiT); else an MLP head
    vector_hidden: int = 512  # MLP tower width for vector columns
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    encoder_lr_scale: float = 0.1
    weight_decay: float = 0.1
    patience: int = 5
    valid_fraction: float = 0.1
    metric: str = "mean_r1"  # early stopping on mean R@1 of both directions, or "map"
    hard_negatives: bool = False
    seed: int = 0
    on_bad_rows: str = "error"
    cache_dir: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AlignConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def is_alignment_run(path: str | os.PathLike) -> bool:
    return (Path(path) / ALIGN_CONFIG).is_file()


# ---- columns --------------------------------------------------------------------------------------------

def _parse_vector(v: Any) -> np.ndarray | None:
    if isinstance(v, (list, tuple, np.ndarray)):
        arr = np.asarray(v, dtype=np.float64)
    elif isinstance(v, str) and v.lstrip().startswith("["):
        try:
            arr = np.asarray(json.loads(v), dtype=np.float64)
        except (ValueError, TypeError):
            return None
    else:
        return None
    return arr if arr.ndim == 1 else None


def column_modality(df: pd.DataFrame, column: str, overrides: dict[str, str]) -> str:
    """image | text | audio | vector for one alignment column (``overrides`` win)."""
    if column not in df.columns:
        raise DataError(f"column '{column}' not found (columns: {', '.join(map(str, df.columns))})",
                        file=df.attrs.get("source"))
    if column in overrides:
        mod = overrides[column]
        if mod not in (IMAGE, TEXT, AUDIO, VECTOR):
            raise PolymodalError(f"column '{column}': alignment sides are image, text, audio or vector, not {mod!r}")
        return mod
    values = [v for v in df[column] if not is_missing(v)]
    if not values:
        raise DataError("every value is missing", file=df.attrs.get("source"), column=column)
    if all(_parse_vector(v) is not None for v in values[:200]):
        return VECTOR
    mod, _ = infer_column_type(df[column], df.attrs.get("base_dir", os.getcwd()))
    if mod in (IMAGE, TEXT, AUDIO):
        return mod
    if mod in (CATEGORICAL, ID) and not pd.api.types.is_numeric_dtype(df[column]):
        return TEXT  # short strings (class names, "a red square") are text to a retrieval model
    raise PolymodalError(f"column '{column}' looks {mod}; pass --column-types {column}=image|text|audio|vector")


def vector_matrix(df: pd.DataFrame, column: str, dim: int | None = None) -> np.ndarray:
    """(N, D) float32 from list/JSON-array cells, with the row of the first bad cell in the error."""
    rows = []
    for r, v in zip(df.index, df[column]):
        arr = None if is_missing(v) else _parse_vector(v)
        if arr is None or not np.isfinite(arr).all():
            raise DataError("expected a list of finite numbers", file=df.attrs.get("source"), row=int(r),
                            column=column)
        if rows and len(arr) != len(rows[0]) or dim is not None and len(arr) != dim:
            raise DataError(f"vector has {len(arr)} numbers, expected {dim or len(rows[0])}",
                            file=df.attrs.get("source"), row=int(r), column=column)
        rows.append(arr)
    return np.stack(rows).astype(np.float32) if rows else np.zeros((0, dim or 0), np.float32)


def positive_groups(df: pd.DataFrame, left: str, right: str, pair_id: str | None = None) -> np.ndarray:
    """Group id per row: ``pair_id``'s value, else connected groups of rows sharing a left or right value."""
    if pair_id:
        if pair_id not in df.columns:
            raise DataError(f"pair-id column '{pair_id}' not found", file=df.attrs.get("source"))
        return pd.factorize(df[pair_id].astype(str))[0]
    parent = list(range(len(df)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for col in (left, right):
        first: dict[str, int] = {}
        for i, v in enumerate(df[col]):
            key = json.dumps(v.tolist() if isinstance(v, np.ndarray) else v, default=str)
            if key in first:
                parent[find(i)] = find(first[key])
            else:
                first[key] = i
    return pd.factorize(np.array([find(i) for i in range(len(df))]))[0]


# ---- sides ------------------------------------------------------------------------------------------------

@dataclass
class SideSpec:
    """One side of the model: its column, modality, encoder and preprocessing."""

    column: str
    modality: str
    encoder: str | None = None
    encoder_opts: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)  # preprocessing (InputSpec.config) or vector stats
    frozen: bool = True

    def input_spec(self) -> InputSpec:
        return InputSpec(self.column, self.modality, [self.column], self.config)


def _build_tower(spec: SideSpec, architecture_dir: str | None = None) -> tuple[nn.Module, int]:
    if spec.modality == VECTOR:
        tower = VectorTower(spec.config["dim"], spec.config["hidden"], spec.config["hidden"])
        return tower, tower.out_dim
    from polymodal.encoders import build_encoder

    opts = dict(spec.encoder_opts)
    name = spec.encoder
    if architecture_dir:  # a run folder: architecture from its saved config, weights from model.safetensors
        name, opts["weights"] = architecture_dir, False
        opts.pop("num_layers", None)
    enc = build_encoder(spec.modality, name, **opts)
    if not spec.config:
        spec.config = enc.preprocess_config()
    if spec.frozen:
        enc.freeze()
    return enc, enc.out_dim


def _preprocessor(specs: Sequence[SideSpec]) -> Preprocessor:
    schema = Schema({s.column: s.modality for s in specs}, label="", problem_type="")
    return Preprocessor(schema=schema, inputs={s.column: s.input_spec() for s in specs})


def _raw_inputs(spec: SideSpec, df: pd.DataFrame) -> torch.Tensor | dict[str, torch.Tensor]:
    """Decode a trainable tower's inputs for every row into memory (tensors with rows along dim 0)."""
    col, cfg = spec.column, spec.config
    if spec.modality == VECTOR:
        x = vector_matrix(df, col, cfg["dim"])
        return torch.from_numpy((x - np.asarray(cfg["mean"], np.float32)) / np.asarray(cfg["std"], np.float32))
    if spec.modality == TEXT:
        from polymodal.encoders.text import get_tokenizer

        enc = get_tokenizer(cfg["tokenizer"])([str(v) for v in df[col]], padding=True, truncation=True,
                                              max_length=cfg.get("max_length", 64), return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    from polymodal.data.transforms import load_audio_features, load_image

    base = df.attrs.get("base_dir", os.getcwd())
    arrays = []
    for r, v in zip(df.index, df[col]):
        try:
            path = resolve_path(v, base)
            arrays.append(load_image(path, cfg["image_size"], cfg["mean"], cfg["std"]) if spec.modality == IMAGE
                          else load_audio_features(path, cfg))
        except DataError as exc:
            raise DataError(exc.detail, file=df.attrs.get("source"), row=int(r), column=col) from None
    longest = max(a.shape[-1] for a in arrays)
    out = np.zeros((len(arrays), *arrays[0].shape[:-1], longest), np.float32)
    for i, a in enumerate(arrays):
        out[i, ..., :a.shape[-1]] = a
    return torch.from_numpy(out)


def _query_input(spec: SideSpec, value: Any) -> torch.Tensor | dict[str, torch.Tensor]:
    """One query (text, image/audio bytes or path, or a vector) → a batch of one for the tower."""
    cfg = spec.config
    if spec.modality == TEXT:
        from polymodal.encoders.text import get_tokenizer

        enc = get_tokenizer(cfg["tokenizer"])([str(value)], truncation=True, max_length=cfg.get("max_length", 64),
                                              return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if spec.modality == VECTOR:
        arr = _parse_vector(value)
        if arr is None or len(arr) != cfg["dim"] or not np.isfinite(arr).all():
            raise PolymodalError(f"the query must be {cfg['dim']} finite numbers")
        x = (arr.astype(np.float32) - np.asarray(cfg["mean"], np.float32)) / np.asarray(cfg["std"], np.float32)
        return torch.from_numpy(x[None])
    from polymodal.data.transforms import load_audio_features, load_image

    src = io.BytesIO(value) if isinstance(value, (bytes, bytearray)) else str(value)
    x = (load_image(src, cfg["image_size"], cfg["mean"], cfg["std"]) if spec.modality == IMAGE
         else load_audio_features(src, cfg))
    return torch.from_numpy(x[None])


def _thumbnail(path: str, size: int = 96) -> str | None:
    """A small JPEG data URI for the web page's result grid (None when the file cannot be read)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=85)
    except Exception:  # a gallery file that vanished or is corrupt just gets no thumbnail
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


# ---- the model -------------------------------------------------------------------------------------------

class AlignedModel:
    """A trained dual encoder over two table columns: embed, evaluate, index, search, zero-shot."""

    def __init__(self, model: DualEncoder, sides: dict[str, SideSpec], config: AlignConfig,
                 path: Path | None = None, metrics: dict | None = None, history: list | None = None) -> None:
        self.model, self.sides, self.config = model, sides, config
        self.path, self.metrics, self.history = path, metrics or {}, history or []
        self.model_id = model.fingerprint()

    # ---- training ----------------------------------------------------------------------------------------
    @classmethod
    def fit(cls, train: pd.DataFrame | str | os.PathLike, config: AlignConfig,
            out: str | os.PathLike | None = None, valid: pd.DataFrame | str | os.PathLike | None = None,
            log: Log = print, device: str | None = None) -> AlignedModel:
        t0 = time.time()
        train_df = train if isinstance(train, pd.DataFrame) else read_table(train)
        valid_df = None if valid is None else valid if isinstance(valid, pd.DataFrame) else read_table(valid)
        if config.left == config.right:
            raise PolymodalError("--left and --right must be two different columns")
        if config.metric not in ("mean_r1", "map"):
            raise PolymodalError("metric must be mean_r1 or map")
        if config.epochs < 1 or config.batch_size < 2:
            raise PolymodalError("epochs must be at least 1 and batch size at least 2 (a pair needs negatives)")
        torch.manual_seed(config.seed)
        sides = {}
        for side in SIDES:
            col = getattr(config, side)
            mod = column_modality(train_df, col, config.column_types)
            sides[side] = SideSpec(col, mod, config.encoders.get(mod), dict(config.encoder_opts.get(mod, {})),
                                   frozen=col not in config.finetune)
            log(f"  {side}: column {col!r} ({mod})")
        for col in config.finetune:
            if col not in (config.left, config.right):
                raise PolymodalError(f"--finetune names {col!r}, which is neither --left nor --right")
        train_df = _drop_missing(train_df, [config.left, config.right], config.on_bad_rows, log)
        if valid_df is None:
            train_df, valid_df = _group_split(train_df, config, log)
        else:
            valid_df = _drop_missing(valid_df, [config.left, config.right], config.on_bad_rows, log)
        for spec in sides.values():  # vector statistics from the training rows only
            if spec.modality == VECTOR:
                x = vector_matrix(train_df, spec.column)
                spec.frozen = False  # a vector tower has no pretrained weights: it always trains
                spec.config = {"dim": int(x.shape[1]), "hidden": config.vector_hidden,
                               "mean": x.mean(0).tolist(), "std": (x.std(0) + 1e-6).tolist()}
        towers = {side: _build_tower(spec) for side, spec in sides.items()}
        model = DualEncoder(towers["left"][0], towers["right"][0], towers["left"][1], towers["right"][1],
                            config.embed_dim, (sides["left"].frozen, sides["right"].frozen), config.head_hidden)
        self = cls(model, sides, config)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        train_df, *tr_lr = self._both_inputs(train_df, device, log)
        valid_df, *va_lr = self._both_inputs(valid_df, device, log)
        tr, va = dict(zip(SIDES, tr_lr)), dict(zip(SIDES, va_lr))
        ids = positive_groups(train_df, config.left, config.right, config.pair_id)
        v_ids = positive_groups(valid_df, config.left, config.right, config.pair_id)
        given = tuple(s for s in SIDES if sides[s].frozen)
        log(f"  training heads on {len(train_df)} pairs ({len(set(ids))} positive groups), "
            f"validating on {len(valid_df)}")
        result = train_alignment(model, tr["left"], tr["right"], ids, epochs=config.epochs,
                                 batch_size=config.batch_size, lr=config.lr, weight_decay=config.weight_decay,
                                 valid=(va["left"], va["right"], v_ids), metric=config.metric,
                                 patience=config.patience, seed=config.seed, hard_negatives=config.hard_negatives,
                                 device=device, features_given=given, tower_lr_scale=config.encoder_lr_scale)
        model.cpu().eval()
        self.model_id = model.fingerprint()
        self.history = result.history
        best = result.history[result.best_epoch] if result.history else {}
        names = {"left_to_right": f"{config.left}_to_{config.right}",
                 "right_to_left": f"{config.right}_to_{config.left}"}
        valid_metrics = {names[k.split("/")[0]] + "/" + k.split("/")[1]: v for k, v in best.items()
                         if k.split("/")[0] in names}
        self.metrics = {"valid": {**valid_metrics, config.metric: best.get(config.metric)},
                        "best_epoch": result.best_epoch, "fit_seconds": round(time.time() - t0, 1),
                        "train_pairs": len(train_df), "valid_pairs": len(valid_df)}
        log(f"  best epoch {result.best_epoch}: {config.metric} = {result.best_score:.4f}")
        if out is not None:
            self.save(out)
        return self

    def _both_inputs(self, df: pd.DataFrame, device: str, log: Log) -> tuple[pd.DataFrame, Any, Any]:
        """Left and right tower inputs for the same rows (a row unreadable on either side is dropped from both)."""
        kept, left = self._inputs("left", df, device, log)
        both, right = self._inputs("right", kept, device, log)
        if len(both) != len(kept):
            _, left = self._inputs("left", both, device, log)
        return both, left, right

    def _inputs(self, side: Side, df: pd.DataFrame, device: str, log: Log = print,
                ) -> tuple[pd.DataFrame, torch.Tensor | dict[str, torch.Tensor]]:
        """Tower inputs for every row: cached tower features for locked towers, decoded inputs otherwise.
        Rows whose file cannot be decoded are raised or dropped (``on_bad_rows``)."""
        spec = self.sides[side]
        if not spec.frozen:
            return df, _raw_inputs(spec, df)
        from polymodal.encoders.cache import precompute_features

        def progress(key, done, total):
            if done == total or done % 1024 < 64:
                log(f"  encoding {key}: {done}/{total}")

        feats, problems, stats = precompute_features(
            df, _preprocessor([spec]), {spec.column: self.model.tower(side)}, [spec.column], self.config.cache_dir,
            64, device, 0, progress)
        f = feats[spec.column][0]
        if problems:
            kept, _ = raise_or_drop(df, problems, self.config.on_bad_rows)
            f = f[df.index.isin(kept.index)]
            log(f"  skipped {len(df) - len(kept)} rows whose {spec.column} cannot be read")
            df = kept
        return df, torch.from_numpy(f)

    # ---- embedding ---------------------------------------------------------------------------------------
    def side_of(self, column_or_modality: str) -> Side:
        for side, spec in self.sides.items():
            if column_or_modality == spec.column:
                return side
        hits = [s for s, spec in self.sides.items() if spec.modality == column_or_modality]
        if len(hits) == 1:
            return hits[0]
        raise PolymodalError(f"{column_or_modality!r} is not a side of this model "
                             f"(left: {self.sides['left'].column}, right: {self.sides['right'].column})")

    def embed(self, data: pd.DataFrame | Sequence, side_or_column: str, device: str | None = None) -> np.ndarray:
        """L2-normalised joint embeddings (N, embed_dim) of a table's column (or a list of values)."""
        side = side_or_column if side_or_column in SIDES else self.side_of(side_or_column)
        spec = self.sides[side]
        df = data if isinstance(data, pd.DataFrame) else pd.DataFrame({spec.column: list(data)})
        if spec.column not in df.columns:
            raise DataError(f"column '{spec.column}' not found", file=df.attrs.get("source"))
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        _, x = self._inputs(side, df, device)
        if len(x) != len(df):  # pragma: no cover - _inputs raises when on_bad_rows is "error"
            raise DataError("rows were dropped", file=df.attrs.get("source"))
        self.model.to(device)
        with torch.inference_mode():
            if spec.frozen:
                out = torch.cat([self.model.project(side, x[s:s + 4096].to(device)).cpu()
                                 for s in range(0, len(x), 4096)]) if len(x) else torch.zeros(0, self.model.embed_dim)
            else:
                out = encode(self.model, x, side, 256, device=device)
        self.model.cpu()
        return out.numpy()

    def query_modalities(self) -> tuple[str, ...]:
        return tuple(sorted({spec.modality for spec in self.sides.values()}))

    def embed_query(self, query: dict, target_side: Side | None = None) -> np.ndarray:
        """(1, D) embedding of a query ``{"text": str}``, ``{"image": bytes | path}``, ``{"audio": ...}`` or
        ``{"vector": [...]}``. The query goes through the side of its modality; when both sides share it, the
        side opposite ``target_side`` (the gallery's side) is used."""
        kinds = [k for k in (TEXT, IMAGE, AUDIO, VECTOR) if k in query and query[k] is not None]
        if len(kinds) != 1:
            raise PolymodalError(f"give exactly one query of: {', '.join(self.query_modalities())}")
        kind = kinds[0]
        sides = [s for s in SIDES if self.sides[s].modality == kind]
        if not sides:
            raise PolymodalError(f"this model embeds {' and '.join(self.query_modalities())}, not {kind}")
        if len(sides) == 2 and target_side is not None:
            sides = [s for s in sides if s != target_side]
        side = sides[0]
        try:
            x = _query_input(self.sides[side], query[kind])
        except DataError as exc:
            raise PolymodalError(f"cannot read the {kind} query: {exc.detail}") from None
        with torch.inference_mode():
            return self.model.project(side, self.model.tower_features(side, x)).numpy()

    # ---- evaluation, index, zero-shot ----------------------------------------------------------------------
    def evaluate(self, data: pd.DataFrame | str | os.PathLike, pair_id: str | None = None) -> dict[str, float]:
        """R@1/5/10, median rank and mAP in both directions (named ``<left>_to_<right>/R@1`` ...)."""
        df = data if isinstance(data, pd.DataFrame) else read_table(data)
        left, right = self.sides["left"].column, self.sides["right"].column
        df = _drop_missing(df, [left, right], self.config.on_bad_rows, lambda m: None)
        groups = positive_groups(df, left, right, pair_id or (self.config.pair_id
                                                              if self.config.pair_id in df.columns else None))
        m = cross_modal_metrics(self.embed(df, "left"), self.embed(df, "right"), pair_ids=groups)
        names = {"left_to_right": f"{left}_to_{right}", "right_to_left": f"{right}_to_{left}"}
        out = {f"{names[d]}/{k}": float(v) for d, vals in m.items() for k, v in vals.items()}
        out["pairs"] = len(df)
        return out

    def build_index(self, data: pd.DataFrame | str | os.PathLike, column: str, id_column: str | None = None,
                    kind: str = "auto", thumbnails: bool = True):
        """A VectorIndex over one column of a gallery table (ids: ``id_column`` or the row number; metadata:
        the value, a thumbnail for images, and the id column)."""
        from polymodal.retrieval.index import VectorIndex

        df = data if isinstance(data, pd.DataFrame) else read_table(data)
        side = self.side_of(column)
        col = self.sides[side].column
        df = _drop_missing(df, [col], self.config.on_bad_rows, lambda m: None)
        vectors = self.embed(df, side)
        ids = df[id_column].tolist() if id_column else [int(i) for i in df.index]
        if id_column and id_column not in df.columns:
            raise DataError(f"id column '{id_column}' not found", file=df.attrs.get("source"))
        base = df.attrs.get("base_dir", os.getcwd())
        meta = []
        for v in df[col]:
            item: dict[str, Any] = {}
            if self.sides[side].modality in (IMAGE, AUDIO):
                item["path"] = str(resolve_path(v, base))  # for the CLI; the HTTP server leaves paths out
                item["name"] = Path(item["path"]).name
                if thumbnails and self.sides[side].modality == IMAGE:
                    item["thumbnail"] = _thumbnail(item["path"])
            elif self.sides[side].modality == TEXT:
                item["caption"] = str(v)
            meta.append(item)
        index = VectorIndex.build(vectors, model_id=self.model_id, ids=ids, metadata=meta, kind=kind)
        index.source = {"run": str(self.path.resolve()) if self.path else None, "side": side, "column": col,
                        "modality": self.sides[side].modality}
        return index

    def zero_shot(self, data: pd.DataFrame | Sequence, column: str, classes: Sequence[str],
                  templates: Sequence[str] = ("{label}",)) -> pd.DataFrame:
        """Class probabilities for each row of ``column`` from text prompts (``"a photo of a {label}"``)
        embedded by the model's text side; several templates are averaged (as open_clip does)."""
        from polymodal.retrieval.align import zero_shot_classify

        side = self.side_of(column)
        text_sides = [s for s in SIDES if s != side and self.sides[s].modality == TEXT]
        if not text_sides:
            raise PolymodalError("zero-shot classification needs a model whose other side is text")
        if not classes or any("{label}" not in t for t in templates):
            raise PolymodalError("give class names and templates containing {label}")
        prompts = [t.format(label=c) for c in classes for t in templates]
        cls_emb = torch.from_numpy(self.embed(prompts, text_sides[0])).reshape(len(classes), len(templates), -1)
        probs = zero_shot_classify(torch.from_numpy(self.embed(data, side)), cls_emb,
                                   float(self.model.criterion.scale().detach()))
        return pd.DataFrame(probs.numpy(), columns=list(classes))

    # ---- persistence ---------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        from polymodal import __version__
        from polymodal.training.artifacts import atomic_write_json, atomic_write_text, save_weights

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for side, spec in self.sides.items():
            if spec.modality == TEXT:  # tokenizer + architecture: the run rebuilds the tower offline
                from polymodal.encoders.text import get_tokenizer

                tower = self.model.tower(side)
                get_tokenizer(spec.config["tokenizer"]).save_pretrained(str(path / "tokenizers" / side))
                tower.model.config.save_pretrained(str(path / "tokenizers" / side))
        save_weights(self.model, path / WEIGHTS)
        atomic_write_json(path / ALIGN_CONFIG, {
            "kind": "alignment", "polymodal_version": __version__, "model_id": self.model_id,
            "config": self.config.to_dict(), "sides": {s: dataclasses.asdict(v) for s, v in self.sides.items()},
            "metrics": self.metrics, "history": self.history})
        atomic_write_text(path / "README.md", self._card())
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> AlignedModel:
        path = Path(path)
        if not is_alignment_run(path):
            raise PolymodalError(f"{path} is not an alignment run folder ({ALIGN_CONFIG} is missing); "
                                 "train one with `polymodal align`")
        meta = json.loads((path / ALIGN_CONFIG).read_text())
        config = AlignConfig.from_dict(meta["config"])
        sides = {s: SideSpec(**v) for s, v in meta["sides"].items()}
        towers = {}
        for side, spec in sides.items():
            arch = path / "tokenizers" / side
            if spec.modality == TEXT and arch.is_dir():
                spec.config["tokenizer"] = str(arch)
            towers[side] = _build_tower(spec, str(arch) if spec.modality == TEXT and arch.is_dir() else None)
        model = DualEncoder(towers["left"][0], towers["right"][0], towers["left"][1], towers["right"][1],
                            config.embed_dim, (sides["left"].frozen, sides["right"].frozen), config.head_hidden)
        from polymodal.training.artifacts import load_weights

        load_weights(model, path / WEIGHTS)
        model.eval()
        self = cls(model, sides, config, path, meta.get("metrics"), meta.get("history"))
        if self.model_id != meta.get("model_id"):
            raise PolymodalError(f"{path / WEIGHTS} does not match {ALIGN_CONFIG} (model id differs)")
        return self

    def _card(self) -> str:
        left, right = self.sides["left"], self.sides["right"]
        lines = [f"# Alignment model: {left.column} ({left.modality}) ↔ {right.column} ({right.modality})", "",
                 f"Model id `{self.model_id}`; joint space {self.config.embed_dim}-d; towers "
                 f"{left.encoder or left.modality} ({'locked' if left.frozen else 'trained'}) and "
                 f"{right.encoder or right.modality} ({'locked' if right.frozen else 'trained'}).", "",
                 "## Validation (best epoch)", ""]
        for k, v in self.metrics.get("valid", {}).items():
            lines.append(f"- {k}: {v:.4f}" if isinstance(v, float) else f"- {k}: {v}")
        lines += ["", "```", f"polymodal evaluate {self.path or 'RUN'} pairs.csv",
                  f"polymodal index {self.path or 'RUN'} gallery.csv --column {right.column} --out gallery.index",
                  "polymodal search gallery.index --text \"...\" -k 10", "```", ""]
        return "\n".join(lines)


def _drop_missing(df: pd.DataFrame, columns: list[str], on_bad_rows: str, log: Log) -> pd.DataFrame:
    problems = [Problem(int(r), c, "value is missing") for c in columns for r, v in zip(df.index, df[c])
                if is_missing(v)]
    if not problems:
        return df
    kept, _ = raise_or_drop(df, problems, on_bad_rows)
    log(f"  skipped {len(df) - len(kept)} rows with a missing value")
    return kept


def _group_split(df: pd.DataFrame, config: AlignConfig, log: Log = print) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validation rows drawn by whole groups of identical values, so no validation image or caption also
    occurs in training. With fewer than 20 such groups (e.g. a handful of class captions) holding out whole
    groups would leave training without some of them: rows are then split individually."""
    from sklearn.model_selection import GroupShuffleSplit, train_test_split

    if len(df) < 10:
        raise DataError(f"{len(df)} pairs: at least 10 are needed to train and validate an alignment",
                        file=df.attrs.get("source"))
    groups = positive_groups(df, config.left, config.right)
    if len(set(groups)) >= 20:
        split = GroupShuffleSplit(n_splits=1, test_size=config.valid_fraction, random_state=config.seed)
        tr, va = next(split.split(df, groups=groups))
        log(f"  split: {len(tr)} train / {len(va)} valid pairs (whole groups of repeated values)")
    else:
        tr, va = train_test_split(np.arange(len(df)), test_size=config.valid_fraction, random_state=config.seed)
        log(f"  split: {len(tr)} train / {len(va)} valid pairs (only {len(set(groups))} groups of repeated "
            "values: split by row)")
    out = df.iloc[np.sort(tr)], df.iloc[np.sort(va)]
    for part in out:
        part.attrs.update(df.attrs)
    return out


def recall_summary(metrics: dict[str, float]) -> str:
    """One line: R@1/5/10 per direction."""
    parts = []
    for key in sorted({k.split("/")[0] for k in metrics if "/" in k}):
        parts.append(f"{key}: " + " ".join(f"R@{k}={metrics[f'{key}/R@{k}']:.3f}" for k in (1, 5, 10)
                                           if f"{key}/R@{k}" in metrics))
    return "; ".join(parts)

