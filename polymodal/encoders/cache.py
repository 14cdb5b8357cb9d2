"""Frozen-encoder feature cache: features are computed once per (encoder, input content) and reused.

Keys are the SHA-1 of a media file's bytes (or of the text), so renamed or copied files hit the cache
and edited files miss it. Storage: one folder per encoder namespace holding shards `NNNN.npy` (memory-
mappable) with a `NNNN.keys.json` written after it as the commit marker; both are written to temporary
names and moved into place, so a killed run never leaves a half shard that later runs would read.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from polymodal.data.dataset import Problem
from polymodal.data.paths import default_cache_dir
from polymodal.data.preprocess import InputSpec, Preprocessor
from polymodal.data.readers import is_missing, resolve_path
from polymodal.data.text import get_tokenizer
from polymodal.data.transforms import load_audio_features, load_image
from polymodal.data.video import frame_files, has_audio_track, load_video
from polymodal.distributed import global_rank, world_size
from polymodal.encoders.onnx_runner import OrtEncoder
from polymodal.encoders.tokens import token_features
from polymodal.errors import DataError, PolymodalError
from polymodal.types import AUDIO, IMAGE, TEXT, TIMESERIES, VIDEO


def content_key(value: str, modality: str) -> str:
    h = hashlib.sha1()
    if modality == TEXT:
        h.update(value.encode("utf-8"))
    elif os.path.isdir(value):  # a folder of video frames: its frames' names and bytes, in order
        for path in frame_files(value):
            h.update(os.path.basename(path).encode("utf-8") + b"\0")
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    else:
        with open(value, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


class FeatureCache:
    """Append-only store of feature vectors under one namespace (encoder id + preprocessing)."""

    def __init__(self, root: str | os.PathLike, namespace: str) -> None:
        self.dir = Path(root) / hashlib.sha1(namespace.encode()).hexdigest()[:20]
        self.namespace = namespace
        self._index: dict[str, tuple[int, int]] | None = None
        self._shards: dict[int, np.ndarray] = {}

    def _load_index(self) -> dict[str, tuple[int, int]]:
        if self._index is None:
            self._index = {}
            if self.dir.exists():
                for kf in sorted(self.dir.glob("*.keys.json")):
                    shard = int(kf.name.split(".")[0])
                    for j, k in enumerate(json.loads(kf.read_text())["keys"]):
                        self._index[k] = (shard, j)
        return self._index

    def __len__(self) -> int:
        return len(self._load_index())

    def get(self, keys: list[str]) -> dict[str, np.ndarray]:
        index, out = self._load_index(), {}
        for k in keys:
            if k in index:
                shard, j = index[k]
                if shard not in self._shards:
                    self._shards[shard] = np.load(self.dir / f"{shard:06d}.npy", mmap_mode="r")
                out[k] = np.asarray(self._shards[shard][j])
        return out

    def put(self, keys: list[str], values: np.ndarray) -> None:
        if not keys:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "namespace.txt").write_text(self.namespace)
        index = self._load_index()
        shard = max((s for s, _ in index.values()), default=-1) + 1
        while (self.dir / f"{shard:06d}.keys.json").exists():  # another process wrote meanwhile
            shard += 1
        dtype = np.float16 if values.dtype == np.float16 else np.float32  # token sequences are kept in half
        _atomic_save_npy(self.dir / f"{shard:06d}.npy", np.ascontiguousarray(values, dtype=dtype))
        _atomic_write(self.dir / f"{shard:06d}.keys.json", json.dumps({"keys": keys}))
        for j, k in enumerate(keys):
            index[k] = (shard, j)


    # Undecodable inputs are recorded by content key (`errors/<key>.txt`), so that other ranks sharing the
    # extraction (and later runs) learn of them without decoding the file again.
    def put_errors(self, errors: dict[str, str]) -> None:
        if not errors:
            return
        (self.dir / "errors").mkdir(parents=True, exist_ok=True)
        for k, err in errors.items():
            _atomic_write(self.dir / "errors" / f"{k}.txt", err)

    def errors(self, keys: list[str]) -> dict[str, str]:
        folder = self.dir / "errors"
        if not folder.exists():
            return {}
        return {k: (folder / f"{k}.txt").read_text() for k in keys if (folder / f"{k}.txt").exists()}

    def refresh(self) -> None:
        """Forget the shard index, so the next `get` sees shards other processes wrote since."""
        self._index = None

    def wait_for(self, keys: list[str], rank: int, world: int, poll: float = 0.5,
                 ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Block until every key is cached or recorded as undecodable by the rank that owns it; returns
        (features, errors). Raises after POLYMODAL_RENDEZVOUS_TIMEOUT seconds (default 3600)."""
        timeout = float(os.environ.get("POLYMODAL_RENDEZVOUS_TIMEOUT", 3600))
        start, got, errs = time.monotonic(), {}, {}
        left = list(keys)
        while True:
            self.refresh()
            got.update(self.get(left))
            errs.update(self.errors([k for k in left if k not in got]))
            left = [k for k in left if k not in got and k not in errs]
            if not left:
                return got, errs
            if time.monotonic() - start > timeout:
                ranks = sorted({owner(k, world) for k in left})
                raise PolymodalError(
                    f"rank {rank} waited {timeout:.0f} s for the features of {len(left)} inputs that rank(s) "
                    f"{', '.join(map(str, ranks))} of {world} compute into the shared cache {self.dir}: did that "
                    "process fail, or do the ranks use different --cache-dir folders? (POLYMODAL_RENDEZVOUS_TIMEOUT "
                    "sets the wait)")
            time.sleep(poll)


def owner(content_key: str, world: int) -> int:
    """The rank that computes this input's features when `world` processes share the extraction: a function
    of the content alone, so every rank agrees without talking, even when their caches differ in timing."""
    return int(content_key[:8], 16) % world if world > 1 else 0


def _shard() -> tuple[int, int]:
    """(rank, world) of this process as launchers announce them before any process group exists (torchrun
    and SLURM set RANK / WORLD_SIZE for every process up front; Lightning's script launcher starts the other
    ranks only inside `Trainer.fit`, after rank 0 has computed everything, so they find it all cached)."""
    world = world_size()
    return (global_rank(), world) if world > 1 else (0, 1)


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _atomic_save_npy(path: Path, arr: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        np.save(f, arr)
    os.replace(tmp, path)


class _Items(Dataset):
    def __init__(self, values: list[str], load: Callable[[str], np.ndarray]) -> None:
        self.values, self.load = values, load

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, i: int):
        try:
            x = self.load(self.values[i])
        except DataError as exc:
            return i, None, exc.detail
        # None: a video whose sound track vanished between the probe and the decode (no samples)
        return (i, x, "") if x is not None else (i, None, f"the audio track of {self.values[i]} has no samples")


def _collate(items) -> tuple[list[int], torch.Tensor | dict | None, dict[int, str], int]:
    """Stack a batch where it was decoded (in the loader's worker): one tensor crosses to the main process
    through shared memory, and can be pinned, instead of one pickled array per item. Clips of different
    lengths (audio) are zero-padded at the end. Returns (indices, batch, {index: error}, items)."""
    good = [(i, x) for i, x, err in items if not err]
    errors = {i: err for i, _, err in items if err}
    if not good:
        return [], None, errors, len(items)
    idx, arrs = [i for i, _ in good], [x for _, x in good]
    if isinstance(arrs[0], dict):  # video: {"frames", "mask"}, all of the same shape
        return idx, {k: torch.from_numpy(np.stack([a[k] for a in arrs])) for k in arrs[0]}, errors, len(items)
    last = max(a.shape[-1] for a in arrs)
    x = np.zeros((len(arrs), *arrs[0].shape[:-1], last), np.float32)
    for j, a in enumerate(arrs):
        x[j, ..., :a.shape[-1]] = a
    return idx, torch.from_numpy(x), errors, len(items)


def namespace(encoder: torch.nn.Module, spec: InputSpec, tokens: bool = False, view: int = 0) -> str:
    top = getattr(encoder, "train_top", 0)
    # a partly fine-tuned encoder caches its prefix's output (the same for pooled and token use)
    what = f"|prefix-top{top}" if top else ("|tokens" if tokens else "")
    return encoder.cache_id + "|" + json.dumps(spec.config, sort_keys=True) + what + (f"|view{view}" if view else "")


def view_rng(path: str, view: int) -> np.random.Generator:
    """The random crop/brightness/contrast of augmented view `view` of an image: a function of the view and
    the file's bytes (as the cache key is), so a cached view does not depend on which file name, rows or run
    computed it."""
    with open(path, "rb") as f:
        return np.random.default_rng((view, zlib.crc32(f.read())))


@torch.inference_mode()
def encode_values(encoder: torch.nn.Module, spec: InputSpec, values: list[str], batch_size: int = 64,
                  device: str | torch.device = "cpu", num_workers: int = 0,
                  progress: Callable[[int], None] | None = None,
                  tokens: bool = False, engine: str | None = "torch",
                  graph_dir: Path | None = None, view: int = 0) -> tuple[np.ndarray, dict[int, str]]:
    """Run a frozen encoder over unique values; returns (features, {index: error}) for undecodable ones.
    `tokens`: token sequences (N, T, D) as `encoders.tokens.token_features` makes them, as float16. An encoder
    with `train_top` gives its frozen prefix's output (float16) instead. `engine` "auto"/"onnx" (None: the
    default engine): pooled image and text features in onnxruntime once the encoder's graph (kept in
    `graph_dir`) passes its check on the first batch (encoders/onnx_runner.py); PyTorch otherwise. `view` > 0:
    images are decoded as training augments them (`view_rng`), for `--cached-views`."""
    if view and spec.modality != IMAGE:
        raise ValueError(f"augmented views are cached for images, not {spec.modality}")
    encoder.eval().to(device)
    pooled = not getattr(encoder, "train_top", 0) and not tokens
    if getattr(encoder, "train_top", 0):  # the frozen prefix's activations, as float16 like token sequences
        def run(x):
            return encoder.prefix(x).half()
    elif tokens:
        def run(x):
            return token_features(encoder, x, spec.modality, spec.config).half()
    else:
        run = OrtEncoder.for_values(encoder, spec.modality, spec.config, graph_dir, engine, len(values), device,
                                    pooled) or encoder
    errors: dict[int, str] = {}
    out: np.ndarray | None = None
    if spec.modality == TEXT:
        tok = get_tokenizer(spec.config["tokenizer"])
        order = sorted(range(len(values)), key=lambda i: len(values[i]))  # length bucketing: less padding
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            enc = tok([values[i] for i in idx], padding=True, truncation=True,
                      max_length=spec.config.get("max_length", 64), return_tensors="pt")
            f = run({k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")})
            out = _place(out, idx, f, len(values))
            if progress:
                progress(len(idx))
        return out, errors
    if spec.modality == IMAGE:
        cfg = spec.config

        def load(p):
            if view:
                try:
                    rng = view_rng(p, view)
                except OSError as exc:
                    raise DataError(f"cannot read {p}: {exc.strerror}") from None
                return load_image(p, cfg["image_size"], cfg["mean"], cfg["std"], True, rng)
            return load_image(p, cfg["image_size"], cfg["mean"], cfg["std"])
    elif spec.modality == AUDIO:
        def load(p):
            return load_audio_features(p, spec.config)
    elif spec.modality == VIDEO:
        def load(p):
            return load_video(p, spec.config)
        # a batch of clips is batch_size frames through the image backbone, not batch_size × num_frames
        batch_size = max(1, batch_size // int(spec.config.get("num_frames", 1)))
    else:
        raise ValueError(f"no feature extraction for modality {spec.modality}")
    cuda = torch.device(device).type == "cuda"
    loader = DataLoader(_Items(values, load), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=_collate, pin_memory=cuda, prefetch_factor=4 if num_workers else None,
                        persistent_workers=False)
    for idx, batch, errs, n in loader:
        errors.update(errs)
        if idx:
            if isinstance(batch, dict):
                f = run({k: v.to(device, non_blocking=cuda) for k, v in batch.items()})
            else:
                f = run(batch.to(device, non_blocking=cuda))
            out = _place(out, idx, f, len(values))
        if progress:
            progress(n)
    if out is None:
        out = np.zeros((len(values), encoder.out_dim), np.float32)
    return out, errors


def _place(out: np.ndarray | None, idx: list[int], f: torch.Tensor, n: int) -> np.ndarray:
    f = (f if f.dtype == torch.float16 else f.float()).cpu().numpy()
    if out is None:
        out = np.zeros((n, *f.shape[1:]), f.dtype)
    out[idx] = f
    return out


def memmap_threshold() -> int:
    """Row-aligned feature arrays larger than this many bytes (env POLYMODAL_MEMMAP_BYTES, default 2 GiB)
    live in a memory-mapped file instead of RAM; the cache shards they are read from are memory-mapped too."""
    return int(os.environ.get("POLYMODAL_MEMMAP_BYTES", 2 << 30))


def _row_array(shape: tuple[int, ...], dtype, cache_dir) -> np.ndarray:
    """Zeros of `shape`: in RAM, or above `memmap_threshold()` a disk-backed array (an unlinked temporary
    .npy under the cache folder: the OS frees it when the last mapping closes)."""
    if int(np.prod(shape)) * np.dtype(dtype).itemsize <= memmap_threshold():
        return np.zeros(shape, dtype)
    folder = Path(cache_dir or default_cache_dir()) / "rows"
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".npy")
    os.close(fd)
    try:
        return np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)  # zero-filled (sparse file)
    finally:
        os.unlink(tmp)


def precompute_features(df: pd.DataFrame, prep: Preprocessor, encoders: dict[str, torch.nn.Module],
                        keys: list[str], cache_dir: str | os.PathLike | None = None, batch_size: int = 64,
                        device: str | torch.device = "cpu", num_workers: int = 0,
                        progress: Callable[[str, int, int], None] | None = None, token_keys=(),
                        engine: str | None = None, view: int = 0,
                        ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[Problem], dict[str, int]]:
    """Row-aligned features for frozen inputs, reusing and filling the cache (`token_keys`: those cached
    as float16 token sequences, see `encoders.tokens`; `engine`: what encodes, see `encode_values`; each
    encoder's ONNX graph is kept in its cache folder; `view` > 0: augmented view `view` of image inputs, kept
    under its own namespace).

    Returns ({key: (features (N, D), present (N,))}, problems for undecodable files, {"computed", "reused"}).
    """
    base = df.attrs.get("base_dir", os.getcwd())
    feats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    problems: list[Problem] = []
    stats = {"computed": 0, "reused": 0}
    for key in keys:
        spec, enc = prep.inputs[key], encoders[key]
        col = spec.columns[0]
        if spec.modality == TIMESERIES:
            raise PolymodalError(f"time-series encoders train from scratch; their features are not cached (input "
                                 f"'{key}'): leave frozen['timeseries'] unset")
        raw = df[col].tolist() if col in df.columns else [None] * len(df)
        vals = [None if is_missing(v) else (str(v) if spec.modality == TEXT else resolve_path(v, base))
                for v in raw]
        if spec.config.get("source") == VIDEO:  # a video's sound track: clips without sound are missing inputs
            sound = {v: has_audio_track(v) for v in set(vals) if v is not None}
            vals = [v if v is not None and sound[v] else None for v in vals]
        uniq = sorted({v for v in vals if v is not None})
        ckeys = {}
        for v in uniq:
            try:
                ckeys[v] = content_key(v, spec.modality)
            except OSError as exc:
                ckeys[v] = None
                problems.extend(Problem(int(r), col, f"cannot read {v}: {exc.strerror}")
                                for r, x in zip(df.index, vals) if x == v)
        as_tokens = key in token_keys
        cache = FeatureCache(cache_dir or default_cache_dir(), namespace(enc, spec, as_tokens, view))
        found = cache.get([k for k in ckeys.values() if k])
        todo = sorted({v for v, k in ckeys.items() if k and k not in found})
        stats["reused"] += len(uniq) - len(todo)
        # undecodable before (the same bytes; recorded by whichever process met them): not decoded again
        failed = cache.errors([ckeys[v] for v in todo])
        missing = todo
        todo = [v for v in todo if ckeys[v] not in failed]
        rank, world = _shard()
        mine = [v for v in todo if owner(ckeys[v], world) == rank]
        if mine:
            done = [0]

            def tick(n, key=key, total=len(mine), done=done):
                done[0] += n
                if progress:
                    progress(key, done[0], total)

            # the encoder's ONNX graph lives with its un-augmented features: every view reuses it
            graph = FeatureCache(cache.dir.parent, namespace(enc, spec, as_tokens)).dir if view else cache.dir
            arr, errors = encode_values(enc, spec, mine, batch_size, device, num_workers, tick, as_tokens, engine,
                                        graph, view)
            ok = [i for i in range(len(mine)) if i not in errors]
            cache.put([ckeys[mine[i]] for i in ok], arr[ok])
            cache.put_errors({ckeys[mine[i]]: err for i, err in errors.items()})
            stats["computed"] += len(ok)
            failed.update({ckeys[mine[i]]: err for i, err in errors.items()})
            found.update({ckeys[mine[i]]: arr[i] for i in ok})
        others = [ckeys[v] for v in todo if owner(ckeys[v], world) != rank]
        if others:  # the other ranks' share: wait for it to appear in the shared cache
            got, errs = cache.wait_for(others, rank, world)
            found.update(got)
            failed.update(errs)
        for v in missing:
            if ckeys[v] in failed:
                problems.extend(Problem(int(r), col, failed[ckeys[v]]) for r, x in zip(df.index, vals) if x == v)
                ckeys[v] = None
        prefixed = getattr(enc, "train_top", 0)  # what encode_values stored: the prefix's output, token or not
        dim = next(iter(found.values())).shape if found else (enc.prefix_shape() if prefixed else (enc.out_dim,))
        out = _row_array((len(df), *dim), np.float16 if as_tokens or prefixed else np.float32, cache_dir)
        present = np.zeros(len(df), bool)
        for r, v in enumerate(vals):
            k = ckeys.get(v) if v is not None else None
            if k is not None:
                out[r], present[r] = found[k], True
        feats[key] = (out, present)
    return feats, problems, stats
