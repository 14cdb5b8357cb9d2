"""An aligned model over two table columns: train it, embed with it, evaluate, index a gallery, zero-shot.

The fronts `polymodal align / evaluate / index / search / zero-shot` call :class:`AlignedModel`; training
is `polymodal.retrieval.fit`, the run folder `polymodal.retrieval.run_folder`, searching a saved index
`polymodal.retrieval.search`.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from polymodal.data.readers import read_table, resolve_path
from polymodal.errors import DataError, PolymodalError
from polymodal.retrieval.align import DualEncoder, Side, encode, zero_shot_classify
from polymodal.retrieval.columns import drop_missing, positive_groups
from polymodal.retrieval.config import ALIGN_CONFIG, SIDES, VECTOR, WEIGHTS, AlignConfig, Log
from polymodal.retrieval.fit import fit_alignment
from polymodal.retrieval.index import VectorIndex
from polymodal.retrieval.metrics import cross_modal_metrics
from polymodal.retrieval.run_folder import read_alignment_run, write_alignment_run
from polymodal.retrieval.towers import SideSpec, query_input, side_inputs
from polymodal.types import AUDIO, IMAGE, TEXT

__all__ = ["AlignedModel", "load_alignment_run"]


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
        """Train on ``config.left`` ↔ ``config.right`` of ``train`` (see `fit_alignment`); saved to ``out``."""
        fitted = fit_alignment(train, config, valid, log, device)
        self = cls(fitted.model, fitted.sides, config, metrics=fitted.metrics, history=fitted.history)
        if out is not None:
            self.save(out)
        return self

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
        _, x = side_inputs(self.model, side, spec, df, self.config, device)
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
            x = query_input(self.sides[side], query[kind])
        except DataError as exc:
            raise PolymodalError(f"cannot read the {kind} query: {exc.detail}") from None
        with torch.inference_mode():
            return self.model.project(side, self.model.tower_features(side, x)).numpy()

    # ---- evaluation, index, zero-shot ----------------------------------------------------------------------
    def evaluate(self, data: pd.DataFrame | str | os.PathLike, pair_id: str | None = None) -> dict[str, float]:
        """R@1/5/10, median rank and mAP in both directions (named ``<left>_to_<right>/R@1`` ...)."""
        df = data if isinstance(data, pd.DataFrame) else read_table(data)
        left, right = self.sides["left"].column, self.sides["right"].column
        df = drop_missing(df, [left, right], self.config.on_bad_rows, lambda m: None)
        groups = positive_groups(df, left, right, pair_id or (self.config.pair_id
                                                              if self.config.pair_id in df.columns else None))
        m = cross_modal_metrics(self.embed(df, "left"), self.embed(df, "right"), pair_ids=groups)
        names = {"left_to_right": f"{left}_to_{right}", "right_to_left": f"{right}_to_{left}"}
        out = {f"{names[d]}/{k}": float(v) for d, vals in m.items() for k, v in vals.items()}
        out["pairs"] = len(df)
        return out

    def build_index(self, data: pd.DataFrame | str | os.PathLike, column: str, id_column: str | None = None,
                    kind: str = "auto", thumbnails: bool = True) -> VectorIndex:
        """A VectorIndex over one column of a gallery table (ids: ``id_column`` or the row number; metadata:
        the value, a thumbnail for images, and the id column)."""
        df = data if isinstance(data, pd.DataFrame) else read_table(data)
        side = self.side_of(column)
        col = self.sides[side].column
        df = drop_missing(df, [col], self.config.on_bad_rows, lambda m: None)
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
        """Write the run folder (align.json, model.safetensors, tokenizers/, README.md) and remember it."""
        path = write_alignment_run(path, self.model, self.sides, self.config, self.model_id, self.metrics,
                                   self.history, self._card())
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> AlignedModel:
        """The model of a run folder written by `polymodal align` (or :meth:`save`)."""
        path = Path(path)
        run = read_alignment_run(path)
        self = cls(run.model, run.sides, run.config, path, run.metrics, run.history)
        if self.model_id != run.model_id:
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



def load_alignment_run(path: str | os.PathLike) -> AlignedModel:
    """The front's loader for an alignment run folder (see `polymodal.retrieval.config.is_alignment_run`)."""
    return AlignedModel.load(path)


def _thumbnail(path: str, size: int = 96) -> str | None:
    """A small JPEG data URI for the web page's result grid (None when the file cannot be read)."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=85)
    except Exception:  # a gallery file that vanished or is corrupt just gets no thumbnail
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
