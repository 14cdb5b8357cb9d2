"""Dual-encoder alignment: two towers, trained projection heads, symmetric InfoNCE; zero-shot classification.

By default the towers are locked and only the projection heads (and the temperature) learn, as in LiT
(Zhai et al. 2022). Locked towers are run once over the training and validation data and training then works
on the cached tower outputs, so an epoch costs a few matrix products and batches of thousands are cheap.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from sklearn.cluster import MiniBatchKMeans
from torch import nn

from polymodal.retrieval.losses import ContrastiveLoss
from polymodal.retrieval.metrics import cross_modal_metrics

__all__ = ["AlignmentResult", "DualEncoder", "VectorTower", "encode", "train_alignment", "zero_shot_classify"]

log = logging.getLogger(__name__)

Side = Literal["left", "right"]
# A tower input: a tensor with items along dim 0, or a dict of such tensors (e.g. a tokenizer's output).
Data = torch.Tensor | Mapping[str, torch.Tensor]


def _n_items(data: Data) -> int:
    return len(next(iter(data.values()))) if isinstance(data, Mapping) else len(data)


def _take(data: Data, idx: torch.Tensor | slice, device: torch.device | None = None) -> Data:
    if isinstance(data, Mapping):
        return {k: v[idx].to(device) for k, v in data.items()}
    return data[idx].to(device)


class VectorTower(nn.Module):
    """A small MLP tower for pre-extracted feature vectors (no pretrained weights, so train it:
    ``freeze_towers=False``)."""

    pretrained = False

    def __init__(self, in_dim: int, hidden: int = 256, out_dim: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float())


def _head(in_dim: int, embed_dim: int, hidden: int | None) -> nn.Module:
    if hidden is None:
        return nn.Linear(in_dim, embed_dim, bias=False)  # CLIP/LiT: a linear projection
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, embed_dim))


class DualEncoder(nn.Module):
    """``left`` and ``right`` towers (any ``nn.Module`` mapping a batch to (B, dim)) with projection heads
    into a shared ``embed_dim`` space and a learnable temperature.

    ``freeze_towers`` locks both towers (LiT), or per side as ``(freeze_left, freeze_right)``; locked towers
    stay in eval mode (no dropout, frozen batch-norm statistics) even while the heads train.
    """

    def __init__(self, left: nn.Module, right: nn.Module, left_dim: int, right_dim: int, embed_dim: int = 256,
                 freeze_towers: bool | tuple[bool, bool] = True, head_hidden: int | None = None,
                 init_temperature: float = 0.07, max_logit_scale: float = 100.0) -> None:
        super().__init__()
        self.left_tower, self.right_tower = left, right
        self.left_head = _head(left_dim, embed_dim, head_hidden)
        self.right_head = _head(right_dim, embed_dim, head_hidden)
        self.criterion = ContrastiveLoss(init_temperature, max_logit_scale)
        self.embed_dim = embed_dim
        frozen = (freeze_towers, freeze_towers) if isinstance(freeze_towers, bool) else tuple(freeze_towers)
        self.frozen = {"left": bool(frozen[0]), "right": bool(frozen[1])}
        for side, tower in (("left", left), ("right", right)):
            if self.frozen[side]:
                tower.requires_grad_(False)
                tower.eval()

    def train(self, mode: bool = True) -> DualEncoder:
        super().train(mode)
        for side in ("left", "right"):
            if self.frozen[side]:
                self.tower(side).eval()
        return self

    def tower(self, side: Side) -> nn.Module:
        return self.left_tower if side == "left" else self.right_tower

    def head(self, side: Side) -> nn.Module:
        return self.left_head if side == "left" else self.right_head

    def tower_features(self, side: Side, x: Data) -> torch.Tensor:
        """Raw tower output (B, dim); computed without a graph when that tower is frozen."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen[side]):
            return self.tower(side)(x)

    def project(self, side: Side, features: torch.Tensor) -> torch.Tensor:
        """Tower features -> L2-normalised joint embedding."""
        return nn.functional.normalize(self.head(side)(features.float()), dim=-1)

    def encode_left(self, x: Data) -> torch.Tensor:
        return self.project("left", self.tower_features("left", x))

    def encode_right(self, x: Data) -> torch.Tensor:
        return self.project("right", self.tower_features("right", x))

    def forward(self, left: Data, right: Data) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_left(left), self.encode_right(right)

    def fingerprint(self) -> str:
        """SHA-256 of the weights (names, shapes, dtypes, values): an index's ``model_id`` for this model."""
        h = hashlib.sha256()
        for name, t in sorted(self.state_dict().items()):
            t = t.detach().cpu().contiguous().reshape(-1)  # 1-D: a 0-d tensor cannot be viewed as bytes
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()


@torch.no_grad()
def encode(model: DualEncoder, data: Data, side: Side, batch_size: int = 1024, *, features: bool = False,
           device: torch.device | str | None = None) -> torch.Tensor:
    """Embed ``data`` in batches (eval mode, on CPU at the end). ``features=True`` returns tower outputs
    instead of joint embeddings."""
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    out = []
    for start in range(0, _n_items(data), batch_size):
        batch = _take(data, slice(start, start + batch_size), device)
        f = model.tower_features(side, batch)
        out.append((f if features else model.project(side, f)).cpu())
    model.train(was_training)
    return torch.cat(out)


@dataclass
class AlignmentResult:
    """Outcome of :func:`train_alignment`: the best weights (already loaded into the model) and per-epoch
    history (train loss, temperature scale, learning rate, validation metrics)."""

    state_dict: dict[str, torch.Tensor]
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = -1
    best_score: float | None = None
    metric: str = "mean_r1"


def _cluster_batch_plan(features: torch.Tensor, batch_size: int, n_clusters: int, gen: torch.Generator,
                        seed: int) -> Callable[[], list[torch.Tensor]]:
    """Hard-negative batching: k-means on the features, then batches cut from cluster-ordered items, so
    neighbours (the hardest negatives) share a batch. Cluster and within-cluster orders are reshuffled by the
    caller's generator each epoch."""
    labels = MiniBatchKMeans(n_clusters=n_clusters, random_state=seed, n_init=3,
                             batch_size=max(1024, 4 * n_clusters)).fit_predict(features.float().numpy())
    labels = torch.as_tensor(labels)

    def batches() -> list[torch.Tensor]:
        order = []
        for c in torch.randperm(n_clusters, generator=gen).tolist():
            members = torch.nonzero(labels == c).flatten()
            order.append(members[torch.randperm(len(members), generator=gen)])
        flat = torch.cat(order)
        chunks = list(flat.split(batch_size))
        return [chunks[i] for i in torch.randperm(len(chunks), generator=gen).tolist()]

    return batches


def _param_groups(model: DualEncoder, weight_decay: float, lr: float, tower_lr_scale: float = 1.0,
                  ) -> list[dict[str, Any]]:
    # As open_clip: no weight decay on biases, norm gains and the temperature. Fine-tuned pretrained towers
    # learn at lr * tower_lr_scale: the fresh heads need large steps, pretrained weights small ones.
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        side = name.split("_tower.")[0] if "_tower." in name else None
        pretrained = side in ("left", "right") and getattr(model.tower(side), "pretrained", False)
        groups.setdefault((p.ndim < 2 or "logit_scale" in name, pretrained), []).append(p)
    return [{"params": ps, "weight_decay": 0.0 if no_decay else weight_decay,
             "lr": lr * (tower_lr_scale if pretrained else 1.0)} for (no_decay, pretrained), ps in groups.items()]


def train_alignment(
    model: DualEncoder,
    left_data: Data,
    right_data: Data,
    pair_ids: torch.Tensor | np.ndarray | None = None,
    *,
    epochs: int = 30,
    batch_size: int = 512,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    warmup_fraction: float = 0.05,
    valid: tuple | None = None,
    metric: Literal["mean_r1", "map"] = "mean_r1",
    patience: int = 5,
    seed: int = 0,
    hard_negatives: bool = False,
    n_clusters: int | None = None,
    encode_batch_size: int = 1024,
    device: torch.device | str | None = None,
    features_given: tuple[Side, ...] = (),
    tower_lr_scale: float = 1.0,
) -> AlignmentResult:
    """Train ``model`` with the symmetric InfoNCE loss on paired rows of ``left_data`` and ``right_data``.

    - ``pair_ids`` (N,): rows sharing an id are all positives of each other (e.g. category ids for
      category-level datasets); default: only row i of the other side is positive.
    - ``valid``: ``(left, right)`` or ``(left, right, pair_ids)``; early stopping on the mean over both
      directions of R@1 (``metric="mean_r1"``) or mAP (``"map"``) with ``patience`` epochs. Without it the
      last epoch is kept.
    - Frozen towers are run once and training uses their cached outputs; for the sides named in
      ``features_given`` (frozen ones) the data passed in already are those outputs (e.g. from the feature
      cache), so the tower is not run at all. Fine-tuned pretrained towers learn at ``lr * tower_lr_scale``.
    - AdamW (no decay on biases/temperature), linear warm-up then cosine decay per step.
    - ``hard_negatives``: batches built from k-means clusters of the left tower features
      (``n_clusters`` default N / batch_size).
    The best weights are loaded into ``model`` and returned with the history.
    """
    if metric not in ("mean_r1", "map"):
        raise ValueError(f"metric must be 'mean_r1' or 'map', not {metric!r}")
    n = _n_items(left_data)
    if _n_items(right_data) != n:
        raise ValueError(f"left has {n} rows, right has {_n_items(right_data)}")
    if n < 2:
        raise ValueError("contrastive training needs at least 2 pairs")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    ids = None if pair_ids is None else torch.as_tensor(np.asarray(pair_ids)).reshape(-1)
    if ids is not None and len(ids) != n:
        raise ValueError(f"{len(ids)} pair ids for {n} pairs")

    # Cache frozen towers' outputs once: training then only touches the heads for that side.
    for side in features_given:
        if not model.frozen[side]:
            raise ValueError(f"features_given names the {side} side, whose tower is trained")

    def prepared(data: Data, side: Side) -> Data:
        if side in features_given:
            return torch.as_tensor(data).float()
        if model.frozen[side]:
            return encode(model, data, side, encode_batch_size, features=True, device=device)
        return data

    train = {"left": prepared(left_data, "left"), "right": prepared(right_data, "right")}
    if valid is not None:
        v_left, v_right = valid[0], valid[1]
        v_ids = np.asarray(valid[2]) if len(valid) > 2 and valid[2] is not None else None
        val = {"left": prepared(v_left, "left"), "right": prepared(v_right, "right")}

    def embed(data: Data, side: Side) -> torch.Tensor:
        if model.frozen[side]:
            was = model.training
            model.eval()
            with torch.no_grad():
                out = torch.cat([model.project(side, data[s:s + encode_batch_size].to(device)).cpu()
                                 for s in range(0, len(data), encode_batch_size)])
            model.train(was)
            return out
        return encode(model, data, side, encode_batch_size, device=device)

    batch_plan = None
    if hard_negatives:
        feats = train["left"] if model.frozen["left"] else encode(model, left_data, "left", encode_batch_size,
                                                                  features=True, device=device)
        k = n_clusters or max(2, n // batch_size)
        batch_plan = _cluster_batch_plan(feats.cpu(), batch_size, min(k, n), gen, seed)

    steps_per_epoch = math.ceil(n / batch_size)
    total = max(1, epochs * steps_per_epoch)
    warmup = int(warmup_fraction * total)
    optimizer = torch.optim.AdamW(_param_groups(model, weight_decay, lr, tower_lr_scale), lr=lr)
    # Linear warm-up then cosine decay to 0, stepped per batch.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / (warmup + 1) if s < warmup
        else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))))

    result = AlignmentResult(state_dict={}, metric=metric)
    best, since_best = -math.inf, 0
    for epoch in range(epochs):
        model.train()
        if batch_plan is not None:
            batches = batch_plan()
        else:
            batches = list(torch.randperm(n, generator=gen).split(batch_size))
        losses = []
        for idx in batches:
            if len(idx) < 2:  # a single pair has no negatives
                continue
            feats = {}
            for side in ("left", "right"):
                x = _take(train[side], idx, device)
                feats[side] = x if model.frozen[side] else model.tower_features(side, x)
            loss = model.criterion(model.project("left", feats["left"]),
                                   model.project("right", feats["right"]),
                                   None if ids is None else ids[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        row: dict[str, Any] = {"epoch": epoch, "train_loss": float(np.mean(losses)),
                               "logit_scale": float(model.criterion.scale().detach()),
                               "lr": scheduler.get_last_lr()[0]}
        if valid is not None:
            m = cross_modal_metrics(embed(val["left"], "left"), embed(val["right"], "right"), pair_ids=v_ids,
                                    compute_map=metric == "map")
            for direction, values in m.items():
                row.update({f"{direction}/{k}": v for k, v in values.items()})
            key = "R@1" if metric == "mean_r1" else "mAP"
            score = 0.5 * (m["left_to_right"][key] + m["right_to_left"][key])
            row[metric] = score
            if score > best:
                best, since_best = score, 0
                result.best_epoch, result.best_score = epoch, score
                result.state_dict = copy.deepcopy(model.state_dict())
            else:
                since_best += 1
        log.info("epoch %d %s", epoch, row)
        result.history.append(row)
        if valid is not None and since_best >= patience:
            break
    if valid is None or not result.state_dict:  # no validation, or no epoch run: keep the last weights
        result.best_epoch, result.state_dict = len(result.history) - 1, copy.deepcopy(model.state_dict())
    model.load_state_dict(result.state_dict)
    model.eval()
    return result


def zero_shot_classify(image_embeddings: torch.Tensor, class_text_embeddings: torch.Tensor,
                       logit_scale: float | torch.Tensor = 100.0) -> torch.Tensor:
    """Class probabilities (N, C) from image embeddings (N, D) and class prompt embeddings, (C, D) or
    (C, P, D) for P prompts per class (averaged after normalisation, then renormalised, as open_clip's
    zero-shot classifier does). Softmax over ``logit_scale`` * cosine similarity."""
    img = nn.functional.normalize(torch.as_tensor(image_embeddings).float(), dim=-1)
    cls = nn.functional.normalize(torch.as_tensor(class_text_embeddings).float(), dim=-1)
    if cls.ndim == 3:
        cls = nn.functional.normalize(cls.mean(dim=1), dim=-1)
    if cls.ndim != 2 or cls.shape[-1] != img.shape[-1]:
        raise ValueError(f"class embeddings {tuple(cls.shape)} do not match image embeddings "
                         f"{tuple(img.shape)}")
    return (logit_scale * img @ cls.T).softmax(dim=-1)
