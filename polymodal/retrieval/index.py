"""A FAISS vector index that remembers which model made its vectors and what each vector points to.

Vectors are L2-normalised and searched by inner product, i.e. by cosine similarity. Small galleries use
exact search (IndexFlatIP); above ``exact_threshold`` ``kind="auto"`` picks IVF-Flat (nlist ~ 4 sqrt(N),
trained on a sample). HNSW is available with ``kind="hnsw"``.

On disk an index is two files: ``PATH`` (the FAISS index) and ``PATH.json`` (model id, kind, dim, ids,
metadata, search parameters and the SHA-256 of ``PATH``). Each is written to a temporary file and moved into
place with ``os.replace``, index first; the checksum makes ``load`` detect a pair torn by an interrupted save.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from polymodal.errors import PolymodalError
from polymodal.files import sha256_file

__all__ = ["IndexFormatError", "ModelMismatchError", "VectorIndex"]

Kind = Literal["auto", "flat", "ivf", "hnsw"]
FORMAT_VERSION = 1


class ModelMismatchError(PolymodalError):
    """The index was built with a different model than the one asked for."""


class IndexFormatError(PolymodalError):
    """The index files are missing, unreadable or do not belong together."""


def _faiss():
    try:
        import faiss
    except ImportError as e:  # faiss is an optional extra
        raise ImportError("polymodal's vector index needs faiss: pip install 'polymodal[retrieval]'") from e
    return faiss


def _prepare(vectors: Any, dim: int | None = None) -> np.ndarray:
    """float32, C-contiguous, L2-normalised copy (FAISS wants exactly this layout)."""
    if hasattr(vectors, "detach"):
        vectors = vectors.detach().cpu().numpy()
    x = np.array(vectors, dtype=np.float32, order="C", copy=True)
    if x.ndim != 2:
        raise ValueError(f"vectors must be 2-D (N, D); got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"vectors have dimension {x.shape[1]}, the index has {dim}")
    _faiss().normalize_L2(x)
    return x


def _atomic_target(path: Path) -> str:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return tmp


class VectorIndex:
    """Cosine-similarity search over a gallery, with item ids, optional metadata and the model's id.

    Build with :meth:`build`; ``search`` returns scores and the stored ids (not FAISS row numbers).
    """

    def __init__(self, index: Any, *, model_id: str, kind: str, dim: int, ids: list, metadata: list | None,
                 params: dict[str, Any], source: dict[str, Any] | None = None) -> None:
        self.index = index
        self.source = source or {}  # where the vectors came from (model run, column, side), for query embedding
        self.model_id = model_id
        self.kind = kind
        self.dim = dim
        self.ids = ids
        self.metadata = metadata
        self.params = params
        self._apply_search_params()

    # ------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        vectors: Any,
        *,
        model_id: str,
        ids: Sequence | None = None,
        metadata: Sequence[dict] | None = None,
        kind: Kind = "auto",
        exact_threshold: int = 50_000,
        nlist: int | None = None,
        nprobe: int = 16,
        train_size: int | None = None,
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 64,
        seed: int = 0,
    ) -> VectorIndex:
        """Index ``vectors`` (N, D). ``ids`` default to 0..N-1; ``metadata`` is one JSON-able dict per item.

        ``kind="auto"``: exact below ``exact_threshold`` items, IVF-Flat above. IVF's ``nlist`` defaults
        to ``4 * sqrt(N)``, trained on ``train_size`` sampled vectors (default ``max(50 * nlist, 10 000)``,
        capped at N). HNSW uses ``hnsw_m`` links per node and ``ef_construction``/``ef_search`` beam widths.
        """
        faiss = _faiss()
        x = _prepare(vectors)
        n, dim = x.shape
        if n == 0:
            raise ValueError("cannot build an index from zero vectors")
        ids = list(range(n)) if ids is None else [i.item() if hasattr(i, "item") else i for i in ids]
        if len(ids) != n:
            raise ValueError(f"{len(ids)} ids for {n} vectors")
        if metadata is not None and len(metadata) != n:
            raise ValueError(f"{len(metadata)} metadata entries for {n} vectors")
        if kind == "auto":
            kind = "flat" if n < exact_threshold else "ivf"
        params: dict[str, Any] = {}
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "ivf":
            nlist = nlist or max(1, min(n // 39, int(round(4 * math.sqrt(n)))))
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = seed
            size = min(n, train_size or max(50 * nlist, 10_000))
            sample = x if size >= n else x[np.random.default_rng(seed).choice(n, size, replace=False)]
            index.train(sample)
            params = {"nlist": nlist, "nprobe": nprobe, "train_size": int(size)}
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = ef_construction
            params = {"M": hnsw_m, "ef_construction": ef_construction, "ef_search": ef_search}
        else:
            raise ValueError(f"unknown index kind {kind!r}; use auto, flat, ivf or hnsw")
        index.add(x)
        return cls(index, model_id=model_id, kind=kind, dim=dim, ids=ids,
                   metadata=list(metadata) if metadata is not None else None, params=params)

    def add(self, vectors: Any, ids: Sequence, metadata: Sequence[dict] | None = None) -> None:
        """Append items (IVF keeps the centroids it was trained with)."""
        x = _prepare(vectors, self.dim)
        if len(ids) != len(x):
            raise ValueError(f"{len(ids)} ids for {len(x)} vectors")
        if (self.metadata is None) != (metadata is None):
            raise ValueError("give metadata for new items exactly when the index already has metadata")
        self.index.add(x)
        self.ids.extend(i.item() if hasattr(i, "item") else i for i in ids)
        if metadata is not None:
            self.metadata.extend(metadata)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    # ------------------------------------------------------------------ search
    def _apply_search_params(self) -> None:
        if self.kind == "ivf":
            self.index.nprobe = int(self.params["nprobe"])
        elif self.kind == "hnsw":
            self.index.hnsw.efSearch = int(self.params["ef_search"])

    def set_search_params(self, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Trade speed for recall: IVF ``nprobe`` (lists visited), HNSW ``ef_search`` (beam width)."""
        if nprobe is not None:
            if self.kind != "ivf":
                raise ValueError("nprobe applies to IVF indexes only")
            self.params["nprobe"] = int(nprobe)
        if ef_search is not None:
            if self.kind != "hnsw":
                raise ValueError("ef_search applies to HNSW indexes only")
            self.params["ef_search"] = int(ef_search)
        self._apply_search_params()

    def search_rows(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores (Nq, k) and FAISS row numbers (Nq, k); -1 rows where fewer than k items were found."""
        k = min(k, len(self))
        return self.index.search(_prepare(queries, self.dim), k)

    def search(self, queries: Any, k: int = 10) -> tuple[np.ndarray, list[list]]:
        """Top-``k`` cosine scores (Nq, k) and the matching item ids, best first."""
        scores, rows = self.search_rows(queries, k)
        ids = [[self.ids[r] for r in row if r >= 0] for row in rows]
        return scores, ids

    def exact_search_rows(self, queries: Any, k: int, block: int = 262_144) -> tuple[np.ndarray, np.ndarray]:
        """Brute-force top-``k`` over the stored vectors, block by block so no second full copy is made."""
        faiss = _faiss()
        q = _prepare(queries, self.dim)
        k = min(k, len(self))
        if self.kind == "flat":
            return self.index.search(q, k)
        if self.kind == "ivf":
            faiss.extract_index_ivf(self.index).make_direct_map()  # lets IVF rows be reconstructed by number
        heap = faiss.ResultHeap(len(q), k, keep_max=True)
        for start in range(0, len(self), block):
            stop = min(start + block, len(self))
            xb = self.index.reconstruct_n(start, stop - start)
            scores, rows = faiss.knn(q, xb, k, metric=faiss.METRIC_INNER_PRODUCT)
            heap.add_result(scores, np.where(rows >= 0, rows + start, -1))
        heap.finalize()
        return heap.D, heap.I

    def recall_against_exact(self, queries: Any, k: int = 10) -> float:
        """Mean |approximate top-k  ∩  exact top-k| / k over the queries (1.0 for the flat index)."""
        _, approx = self.search_rows(queries, k)
        _, exact = self.exact_search_rows(queries, k)
        k = exact.shape[1]
        hits = [len(set(a[a >= 0]).intersection(e[e >= 0])) for a, e in zip(approx, exact, strict=True)]
        return float(np.mean(hits) / k)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path`` (FAISS index) and ``path.json`` (sidecar), each atomically. Returns ``path``."""
        faiss = _faiss()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_index = _atomic_target(path)
        tmp_sidecar = None
        try:
            faiss.write_index(self.index, tmp_index)
            sidecar = {
                "format_version": FORMAT_VERSION, "model_id": self.model_id, "kind": self.kind,
                "dim": self.dim,
                "ntotal": len(self), "metric": "cosine", "params": self.params, "ids": self.ids,
                "metadata": self.metadata, "source": self.source, "index_sha256": sha256_file(Path(tmp_index)),
            }
            tmp_sidecar = _atomic_target(path.with_name(path.name + ".json"))
            with open(tmp_sidecar, "w", encoding="utf-8") as f:
                json.dump(sidecar, f)
            os.replace(tmp_index, path)
            os.replace(tmp_sidecar, path.with_name(path.name + ".json"))
        finally:
            for tmp in (tmp_index, tmp_sidecar):
                if tmp is not None and os.path.exists(tmp):
                    os.unlink(tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, expected_model_id: str | None = None) -> VectorIndex:
        """Read an index saved by :meth:`save`; refuse it when ``expected_model_id`` is not its model."""
        faiss = _faiss()
        path = Path(path)
        sidecar_path = path.with_name(path.name + ".json")
        if not path.is_file() or not sidecar_path.is_file():
            raise IndexFormatError(f"index {path} needs both {path.name} and {sidecar_path.name}")
        try:
            meta = json.loads(sidecar_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise IndexFormatError(f"cannot read index sidecar {sidecar_path}: {e}") from e
        if expected_model_id is not None and meta.get("model_id") != expected_model_id:
            raise ModelMismatchError(
                f"index {path} was built with model {meta.get('model_id')!r}, not {expected_model_id!r}: its "
                "vectors are not comparable with this model's embeddings; rebuild the index with this model")
        if sha256_file(path) != meta.get("index_sha256"):
            raise IndexFormatError(f"{path} does not match its sidecar {sidecar_path.name} "
                                   "(interrupted save or edited file?)")
        index = faiss.read_index(str(path))
        if index.ntotal != len(meta["ids"]) or index.d != meta["dim"]:
            raise IndexFormatError(f"{path}: {index.ntotal} vectors of dim {index.d}, sidecar says "
                                   f"{len(meta['ids'])} of dim {meta['dim']}")
        return cls(index, model_id=meta["model_id"], kind=meta["kind"], dim=meta["dim"], ids=meta["ids"],
                   metadata=meta.get("metadata"), params=meta.get("params", {}), source=meta.get("source"))
