"""Domain adaptation of a pretrained encoder on a table's own, unlabelled images or texts (`polymodal adapt`).

Contrastive continued pre-training with in-batch negatives (NT-Xent): two views of each value, the encoder's
top and a small projection head trained so that views of one value match and views of different values do not.
- images: SimCLR (Chen et al., ICML 2020); the views are two random crops with brightness/contrast jitter;
- texts: unsupervised SimCSE (Gao et al., EMNLP 2021); the views are two dropout masks of the same sentence.
Only the last `train_top` blocks or layers train (the partial fine-tuning split of `encoders/base.py`): on a
CPU that is what fits, and it keeps the pretrained features below intact.

The result is a folder (`adapted.json` + `encoder.safetensors`) that `fit --image-encoder adapted:DIR` /
`--text-encoder adapted:DIR` builds (`encoders.base.read_adapted`); its cache id carries the weights' SHA-256,
so cached features of the original encoder are never reused for it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from polymodal.data.readers import is_missing, read_table, resolve_path
from polymodal.data.schema import infer_column_type
from polymodal.data.text import get_tokenizer
from polymodal.data.transforms import load_image
from polymodal.encoders import build_encoder
from polymodal.encoders.base import ADAPTED_META, ADAPTED_WEIGHTS
from polymodal.encoders.image import SPLITTABLE
from polymodal.errors import DataError, PolymodalError
from polymodal.files import sha256_file
from polymodal.training.artifacts import atomic_write_json, save_weights
from polymodal.types import IMAGE, TEXT
from polymodal.version import __version__

DEFAULTS = {  # modality → (encoder, blocks/layers that adapt, temperature: SimCLR's and SimCSE's)
    IMAGE: ("efficientnet-lite0", 3, 0.2),
    TEXT: ("minilm-l6", 2, 0.05),
}


@dataclass
class AdaptConfig:
    """Settings of one adaptation run (saved in adapted.json); None = the modality's default."""

    column: str
    encoder: str | None = None
    image_size: int = 224
    max_length: int = 64
    train_top: int | None = None
    epochs: int = 10
    batch_size: int = 32
    lr: float = 3e-4
    temperature: float | None = None
    projection_dim: int = 128
    seed: int = 0

    def resolved(self, modality: str) -> AdaptConfig:
        """This config with the modality's defaults filled in, checked."""
        if modality not in DEFAULTS:
            raise PolymodalError(f"column '{self.column}' holds {modality} values; adapt takes image or text columns")
        encoder, top, temperature = DEFAULTS[modality]
        c = replace(self, encoder=self.encoder or encoder, train_top=self.train_top or top,
                    temperature=self.temperature or temperature)
        if modality == IMAGE and c.encoder not in SPLITTABLE:
            raise PolymodalError(f"adapt trains the top blocks of {', '.join(SPLITTABLE)}, not {c.encoder!r}")
        for name in ("image_size", "max_length", "train_top", "epochs", "projection_dim"):
            if int(getattr(c, name)) < 1:
                raise PolymodalError(f"{name} must be at least 1, got {getattr(c, name)}")
        if int(c.batch_size) < 2:
            raise PolymodalError("batch_size must be at least 2: the other values of a batch are the negatives")
        if not c.temperature > 0 or not c.lr > 0:
            raise PolymodalError("temperature and lr must be positive")
        return c


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalised-temperature cross entropy: for each of the 2N views, its other view is the positive
    among the 2N - 1 others. Written out (a few lines) because no maintained library we depend on has it."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    n = len(z1)
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def column_values(table: str | os.PathLike, column: str) -> tuple[str, list[str]]:
    """(modality, distinct values) of `column`: image files (resolved, each checked to exist) or texts."""
    df = read_table(table)
    if column not in df.columns:
        raise DataError(f"column '{column}' not found; columns are: {', '.join(map(str, df.columns))}",
                        file=str(table))
    base = df.attrs.get("base_dir", os.getcwd())
    modality, _ = infer_column_type(df[column], base)
    values = sorted({str(v) for v in df[column] if not is_missing(v)})
    if modality == IMAGE:
        values = sorted({resolve_path(v, base) for v in values})
        missing = [p for p in values if not os.path.isfile(p)]
        if missing:
            raise DataError(f"{len(missing)} image file(s) not found, e.g. {missing[0]}", file=str(table),
                            column=column)
    if len(values) < 2:
        raise DataError(f"adapt needs at least 2 distinct values in column '{column}', found {len(values)}",
                        file=str(table), column=column)
    return modality, values


def adapt(table: str | os.PathLike, config: AdaptConfig, out: str | os.PathLike,
          log: Callable[[str], None] = print) -> dict:
    """Adapt an encoder to the images or texts of `table`'s `config.column`; writes `out`, returns its metadata."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / ADAPTED_META).exists():
        raise PolymodalError(f"{out} exists and is not an adapted-encoder folder: choose another --out")
    modality, values = column_values(table, config.column)
    c = config.resolved(modality)
    torch.manual_seed(c.seed)
    rng = np.random.default_rng(c.seed)
    if modality == IMAGE:
        enc = build_encoder(IMAGE, c.encoder, image_size=c.image_size, train_top=c.train_top).freeze()
        pre = enc.preprocess_config()

        def views(chunk: list[str]) -> tuple[torch.Tensor, torch.Tensor]:  # two random crops, prefix outputs
            return tuple(enc.prefix(torch.from_numpy(np.stack([
                load_image(p, pre["image_size"], pre["mean"], pre["std"], augment=True, rng=rng) for p in chunk])))
                for _ in range(2))
        what, size = "blocks", {"image_size": c.image_size}
    else:
        enc = build_encoder(TEXT, c.encoder, max_length=c.max_length, train_top=c.train_top).freeze()
        tok = get_tokenizer(enc.preprocess_config()["tokenizer"])

        def views(chunk: list[str]) -> tuple[torch.Tensor, torch.Tensor]:  # one prefix; dropout makes two views
            b = tok(chunk, padding=True, truncation=True, max_length=c.max_length, return_tensors="pt")
            h = enc.prefix({k: b[k] for k in ("input_ids", "attention_mask")})
            return h, h
        what, size = "layers", {"max_length": c.max_length}
    head = nn.Sequential(nn.Linear(enc.out_dim, 512), nn.ReLU(), nn.Linear(512, c.projection_dim))
    params = [p for p in enc.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=c.lr, weight_decay=1e-4)
    batch = min(c.batch_size, len(values))
    log(f"adapting {c.encoder} (top {c.train_top} {what}) on {len(values)} distinct values of '{c.column}': "
        f"{'SimCLR' if modality == IMAGE else 'SimCSE'}, {c.epochs} epochs")
    history, t0 = [], time.time()
    for epoch in range(c.epochs):
        order = rng.permutation(len(values))
        losses = []
        enc.train()
        for s in range(0, len(order) - batch + 1, batch):  # full batches only: each needs its negatives
            with torch.no_grad():  # the frozen prefix: no graph kept
                h1, h2 = views([values[i] for i in order[s:s + batch]])
            loss = nt_xent(head(enc.from_prefix(h1)), head(enc.from_prefix(h2)), c.temperature)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss))
        history.append(float(np.mean(losses)))
        log(f"  epoch {epoch + 1}/{c.epochs}: contrastive loss {history[-1]:.4f} ({time.time() - t0:.0f} s)")
    out.mkdir(parents=True, exist_ok=True)
    enc.eval()
    save_weights(enc, out / ADAPTED_WEIGHTS)
    meta = {"modality": modality, "base": c.encoder, **size, "sha256": sha256_file(out / ADAPTED_WEIGHTS),
            "values": len(values), "loss_history": history, "seconds": round(time.time() - t0, 1),
            "config": asdict(c), "source": str(table), "polymodal_version": __version__}
    atomic_write_json(out / ADAPTED_META, meta)  # last: a folder without it is incomplete
    log(f"adapted encoder: {out} (use: polymodal fit ... --{modality}-encoder adapted:{out})")
    return meta
