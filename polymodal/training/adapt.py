"""Domain adaptation of a pretrained image encoder on a table's own, unlabelled images (`polymodal adapt`).

SimCLR (Chen et al., ICML 2020): two augmented views of each image, the encoder's top blocks and a small
projection head trained so that views of one image match and views of different images do not (NT-Xent loss,
in-batch negatives). Only the last `train_top` blocks train (the partial fine-tuning split of
`encoders/base.py`): on a CPU that is what fits, and it keeps the ImageNet features below intact.

The result is a folder (`adapted.json` + `encoder.safetensors`) that `fit --image-encoder adapted:DIR` builds
(see `encoders.image.load_adapted`); its cache id carries the weights' SHA-256, so cached features of the
ImageNet encoder are never reused for it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from polymodal.data.readers import is_missing, read_table, resolve_path
from polymodal.data.transforms import load_image
from polymodal.encoders import build_encoder
from polymodal.encoders.image import ADAPTED_META, ADAPTED_WEIGHTS, SPLITTABLE
from polymodal.errors import DataError, PolymodalError
from polymodal.files import sha256_file
from polymodal.training.artifacts import atomic_write_json, save_weights
from polymodal.version import __version__


@dataclass
class AdaptConfig:
    """Settings of one adaptation run (saved in adapted.json)."""

    column: str
    encoder: str = "efficientnet-lite0"
    image_size: int = 224
    train_top: int = 3
    epochs: int = 10
    batch_size: int = 32
    lr: float = 3e-4
    temperature: float = 0.2
    projection_dim: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if self.encoder not in SPLITTABLE:
            raise PolymodalError(f"adapt trains the top blocks of {', '.join(SPLITTABLE)}, not {self.encoder!r}")
        for name in ("image_size", "train_top", "epochs", "projection_dim"):
            if int(getattr(self, name)) < 1:
                raise PolymodalError(f"{name} must be at least 1, got {getattr(self, name)}")
        if int(self.batch_size) < 2:
            raise PolymodalError("batch_size must be at least 2: the other images of a batch are the negatives")
        if not self.temperature > 0 or not self.lr > 0:
            raise PolymodalError("temperature and lr must be positive")


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalised-temperature cross entropy: for each of the 2N views, its other view is the positive
    among the 2N - 1 others. Written out (a few lines) because no maintained library we depend on has it."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    n = len(z1)
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def image_paths(table: str | os.PathLike, column: str) -> list[str]:
    """The distinct, readable image files of `column` (rows sharing a file count once)."""
    df = read_table(table)
    if column not in df.columns:
        raise DataError(f"column '{column}' not found; columns are: {', '.join(map(str, df.columns))}",
                        file=str(table))
    base = df.attrs.get("base_dir", os.getcwd())
    paths = sorted({resolve_path(v, base) for v in df[column] if not is_missing(v)})
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(f"{len(missing)} image file(s) not found, e.g. {missing[0]}", file=str(table), column=column)
    if len(paths) < 2:
        raise DataError(f"adapt needs at least 2 distinct images in column '{column}', found {len(paths)}",
                        file=str(table), column=column)
    return paths


def adapt_images(table: str | os.PathLike, config: AdaptConfig, out: str | os.PathLike,
                 log: Callable[[str], None] = print) -> dict:
    """Adapt `config.encoder` to the images of `table`'s `config.column`; writes `out` and returns its metadata."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / ADAPTED_META).exists():
        raise PolymodalError(f"{out} exists and is not an adapted-encoder folder: choose another --out")
    paths = image_paths(table, config.column)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    enc = build_encoder("image", config.encoder, image_size=config.image_size, train_top=config.train_top).freeze()
    head = nn.Sequential(nn.Linear(enc.out_dim, 512), nn.ReLU(), nn.Linear(512, config.projection_dim))
    params = [p for p in enc.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=1e-4)
    pre = enc.preprocess_config()
    batch = min(config.batch_size, len(paths))
    log(f"adapting {config.encoder} (top {config.train_top} blocks) on {len(paths)} images of '{config.column}': "
        f"SimCLR, {config.epochs} epochs")
    history, t0 = [], time.time()
    for epoch in range(config.epochs):
        order = rng.permutation(len(paths))
        losses = []
        enc.train()
        for s in range(0, len(order) - batch + 1, batch):  # full batches only: each needs its negatives
            chosen = [paths[i] for i in order[s:s + batch]]
            views = [torch.from_numpy(np.stack([load_image(p, pre["image_size"], pre["mean"], pre["std"],
                                                           augment=True, rng=rng) for p in chosen]))
                     for _ in range(2)]
            with torch.no_grad():  # the frozen prefix: no graph kept
                h = [enc.prefix(v) for v in views]
            loss = nt_xent(head(enc.from_prefix(h[0])), head(enc.from_prefix(h[1])), config.temperature)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss))
        history.append(float(np.mean(losses)))
        log(f"  epoch {epoch + 1}/{config.epochs}: contrastive loss {history[-1]:.4f} ({time.time() - t0:.0f} s)")
    out.mkdir(parents=True, exist_ok=True)
    enc.eval()
    save_weights(enc, out / ADAPTED_WEIGHTS)
    sha = sha256_file(out / ADAPTED_WEIGHTS)
    meta = {"modality": "image", "base": config.encoder, "image_size": config.image_size, "sha256": sha,
            "images": len(paths), "loss_history": history, "seconds": round(time.time() - t0, 1),
            "config": asdict(config), "source": str(table), "polymodal_version": __version__}
    atomic_write_json(out / ADAPTED_META, meta)  # last: a folder without it is incomplete
    log(f"adapted encoder: {out} (use: polymodal fit ... --image-encoder adapted:{out})")
    return meta
