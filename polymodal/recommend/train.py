"""Training the two-tower model: history bags, the losses, the epoch loop with early stopping.

One training example is one interaction (user u, the item at position t of u's history). The user tower
sees u's other interactions (each dropped with probability `history_dropout`, a denoising that keeps the
model from leaning on any single item) and, as "recent", the `recent` items before position t; at inference
it sees the whole history and its last `recent` items, which is where the next interaction comes from.

Losses over cosine scores / temperature:
- "sampled-softmax": the other examples' items in the batch are the negatives, each logit corrected by
  log of the item's sampling probability (logQ; Yi et al. 2019), so popular items are not over-penalised;
  `num_negatives` adds items drawn uniformly from the trained items (with their own correction).
- "full-softmax": every trained item is a negative (exact, for catalogues of up to ~1e5 items).
- "bpr": one uniformly drawn negative per positive, -log sigmoid(s_pos - s_neg) (Rendle et al. 2009).
Items with no training interaction are never negatives: they are the ones served from content alone.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from polymodal.errors import PolymodalError
from polymodal.recommend.metrics import sampled_metrics
from polymodal.recommend.model import TwoTower

LOSSES = ("sampled-softmax", "full-softmax", "bpr")
Log = Callable[[str], None]


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 1024
    lr: float = 3e-3
    weight_decay: float = 0.0
    loss: str = "sampled-softmax"
    num_negatives: int = 0
    history_dropout: float = 0.5
    max_history: int = 0  # training bags keep at most this many random history items (0: all)
    item_id_dropout: float = 0.0
    user_id_dropout: float = 0.0
    patience: int = 3
    seed: int = 0

    def check(self) -> None:
        if self.loss not in LOSSES:
            raise PolymodalError(f"unknown loss {self.loss!r}; use one of {', '.join(LOSSES)}")
        if self.max_history < 0:
            raise PolymodalError("max_history must be 0 (no cap) or positive")
        if self.epochs < 1 or self.batch_size < 2:
            raise PolymodalError("epochs must be at least 1 and the batch size at least 2")
        for name in ("history_dropout", "item_id_dropout", "user_id_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise PolymodalError(f"{name} must be in [0, 1)")

    def to_dict(self) -> dict:
        return asdict(self)


class Histories:
    """Every user's item indices in order, stored flat (one array) with a start and length per user."""

    def __init__(self, seqs: list[np.ndarray]) -> None:
        self.length = np.array([len(s) for s in seqs], np.int64)
        self.start = np.concatenate([[0], np.cumsum(self.length)[:-1]]).astype(np.int64)
        self.flat = np.concatenate([np.asarray(s, np.int64) for s in seqs]) if len(seqs) else np.zeros(0, np.int64)

    def of(self, user: int) -> np.ndarray:
        return self.flat[self.start[user]:self.start[user] + self.length[user]]

    def examples(self) -> tuple[np.ndarray, np.ndarray]:
        """(user, position) of every interaction."""
        users = np.repeat(np.arange(len(self.length)), self.length)
        return users, np.arange(len(self.flat)) - np.repeat(self.start, self.length)


def _bag(flat: np.ndarray, first: np.ndarray, count: np.ndarray, keep: Callable | None = None,
         ) -> tuple[Tensor, Tensor]:
    """Bags of flat[first[b] : first[b] + count[b]] (optionally filtered by keep(example, position))."""
    ex = np.repeat(np.arange(len(count)), count)
    pos = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    idx = flat[first[ex] + pos]
    if keep is not None:
        mask = keep(ex, pos)
        ex, idx = ex[mask], idx[mask]
    counts = np.bincount(ex, minlength=len(count))
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return torch.from_numpy(idx.astype(np.int64)), torch.from_numpy(offsets.astype(np.int64))


def inference_bags(hist: Histories, users: np.ndarray, n_pools: int, recent: int) -> list[tuple[Tensor, Tensor]]:
    """History (all items) and recent (last `recent`) bags of whole histories."""
    start, length = hist.start[users], hist.length[users]
    bags = [_bag(hist.flat, start, length)] if n_pools else []
    if n_pools > 1:
        n = np.minimum(length, recent)
        bags.append(_bag(hist.flat, start + length - n, n))
    return bags


def cap_per_group(mask: np.ndarray, group: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """`mask` with at most `cap` True entries per group value, the survivors chosen uniformly at random."""
    idx = np.flatnonzero(mask)
    order = np.lexsort((rng.random(len(idx)), group[idx]))  # by group, random within a group
    g = group[idx][order]
    rank = np.arange(len(g)) - np.searchsorted(g, g, side="left")
    out = mask.copy()
    out[idx[order[rank >= cap]]] = False
    return out


def training_bags(hist: Histories, users: np.ndarray, pos: np.ndarray, n_pools: int, recent: int,
                  drop: float, rng: np.random.Generator, max_history: int = 0) -> list[tuple[Tensor, Tensor]]:
    """History bags without the target position (with dropout, and at most `max_history` random items: the
    mean of a random subset estimates the whole history's mean at a fraction of the cost for long histories),
    recent = the items just before it."""
    start, length = hist.start[users], hist.length[users]
    bags = []
    if n_pools:
        def keep(ex, p):
            mask = (p != pos[ex]) & (rng.random(len(p)) >= drop)
            return cap_per_group(mask, ex, max_history, rng) if max_history else mask

        bags.append(_bag(hist.flat, start, length, keep))
    if n_pools > 1:
        n = np.minimum(pos, recent)
        bags.append(_bag(hist.flat, start + pos - n, n))
    return bags


def n_pools(model: TwoTower) -> int:
    cfg = model.cfg
    return (1 if cfg.history else 0) + (1 if cfg.history and cfg.recent > 0 else 0)


def user_vectors(model: TwoTower, inputs: dict, pools: list[Tensor], hist: Histories, users: np.ndarray,
                 batch: int = 4096) -> Tensor:
    """Inference user vectors (whole histories, ids kept where the user was trained)."""
    out = []
    for s in range(0, len(users), batch):
        u = users[s:s + batch]
        bags = inference_bags(hist, u, n_pools(model), model.cfg.recent)
        ut = torch.from_numpy(u)
        tab = {k: v[ut] for k, v in inputs["user_tabular"].items()}
        out.append(model.user_vectors(ut, inputs["user_warm"][ut], tab, pools, bags))
    return torch.cat(out) if out else torch.zeros(0, model.cfg.dim)


def _loss(cfg: TrainConfig, model: TwoTower, zu: Tensor, item_vecs: Tensor, target: Tensor, logq: Tensor,
          warm_idx: Tensor, gen: torch.Generator) -> Tensor:
    temp = model.cfg.temperature
    if cfg.loss == "full-softmax":
        logits = zu @ item_vecs[warm_idx].T / temp
        lookup = torch.full((len(item_vecs),), -1, dtype=torch.long)
        lookup[warm_idx] = torch.arange(len(warm_idx))
        return F.cross_entropy(logits, lookup[target])
    if cfg.loss == "bpr":
        neg = warm_idx[torch.randint(len(warm_idx), (len(target),), generator=gen)]
        pos_s = (zu * item_vecs[target]).sum(-1) / temp
        neg_s = (zu * item_vecs[neg]).sum(-1) / temp
        return -F.logsigmoid(pos_s - neg_s).mean()
    cand = target
    if cfg.num_negatives:
        cand = torch.cat([target, warm_idx[torch.randint(len(warm_idx), (cfg.num_negatives,), generator=gen)]])
    logits = zu @ item_vecs[cand].T / temp - logq[cand]
    clash = (cand.unsqueeze(0) == target.unsqueeze(1))  # the positive's own item elsewhere is no negative
    clash[torch.arange(len(target)), torch.arange(len(target))] = False
    return F.cross_entropy(logits.masked_fill(clash, float("-inf")), torch.arange(len(target)))


@torch.no_grad()
def validate(model: TwoTower, inputs: dict, hist: Histories, users: np.ndarray, candidates: np.ndarray,
             ) -> dict[str, float]:
    """Sampled-protocol metrics: `candidates` (V, 1 + M) item indices, the positive first, -1 = padding."""
    model.eval()
    item_vecs, pools = model.item_parts(inputs["items"], inputs["warm"])
    zu = user_vectors(model, inputs, pools, hist, users)
    s = (zu @ item_vecs.T).numpy() / model.cfg.temperature
    scores = np.take_along_axis(s, np.maximum(candidates, 0), axis=1)
    scores = np.where(candidates >= 0, scores, np.nan)
    return sampled_metrics(scores[:, 0], scores[:, 1:])


def train_two_tower(model: TwoTower, inputs: dict, hist: Histories, cfg: TrainConfig,
                    valid: tuple[np.ndarray, np.ndarray] | None = None, log: Log = print,
                    monitor: str = "ndcg@10") -> list[dict]:
    """Train in place; with `valid` = (users, candidates) keep the weights of the best validation epoch
    (stopping after `patience` epochs without improvement). Returns the per-epoch history."""
    cfg.check()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    users, pos = hist.examples()
    if len(users) == 0:
        raise PolymodalError("no interactions to train on")
    targets = hist.flat
    warm = inputs["warm"]
    warm_idx = torch.nonzero(warm).squeeze(1)
    counts = np.bincount(targets, minlength=len(warm)).astype(np.float64)
    n_neg = cfg.num_negatives
    q = cfg.batch_size * counts / counts.sum() + n_neg / max(1, len(warm_idx))  # expected draws per step
    logq = torch.from_numpy(np.log(np.maximum(q, 1e-12))).float()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    pools_n, recent = n_pools(model), model.cfg.recent
    history, best, best_state, bad = [], -np.inf, None, 0
    for epoch in range(cfg.epochs):
        t0 = time.time()
        model.train()
        order = rng.permutation(len(users))
        total, steps = 0.0, 0
        for s in range(0, len(order), cfg.batch_size):
            b = order[s:s + cfg.batch_size]
            if len(b) < 2:
                continue
            u, p, target = users[b], pos[b], torch.from_numpy(targets[hist.start[users[b]] + pos[b]])
            item_keep = warm.float()
            if cfg.item_id_dropout:
                item_keep = item_keep * (torch.rand(len(warm), generator=gen) >= cfg.item_id_dropout)
            item_vecs, pools = model.item_parts(inputs["items"], item_keep)
            bags = training_bags(hist, u, p, pools_n, recent, cfg.history_dropout, rng, cfg.max_history)
            ut = torch.from_numpy(u)
            user_keep = inputs["user_warm"][ut].float()
            if cfg.user_id_dropout:
                user_keep = user_keep * (torch.rand(len(u), generator=gen) >= cfg.user_id_dropout)
            tab = {k: v[ut] for k, v in inputs["user_tabular"].items()}
            zu = model.user_vectors(ut, user_keep, tab, pools, bags)
            loss = _loss(cfg, model, zu, item_vecs, target, logq, warm_idx, gen)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, steps = total + float(loss.detach()), steps + 1
        row = {"epoch": epoch + 1, "loss": total / max(1, steps), "seconds": round(time.time() - t0, 2)}
        if valid is not None:
            row.update({f"valid_{k}": v for k, v in validate(model, inputs, hist, *valid).items() if k != "users"})
            score = row[f"valid_{monitor}"]
            if score > best:
                best, best_state, bad = score, copy.deepcopy(model.state_dict()), 0
            else:
                bad += 1
        history.append(row)
        log("  epoch {epoch}: loss {loss:.4f}".format(**row)
            + (f", valid {monitor} {row[f'valid_{monitor}']:.4f}" if valid is not None else "")
            + f" ({row['seconds']:.1f} s)")
        if valid is not None and bad >= cfg.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history
