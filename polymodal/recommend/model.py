"""The two-tower recommender: a user tower and an item tower whose outputs meet in a cosine score.

Item tower: v_i = normalise(id_i · keep_i + content_i). content_i sums, over the item's present inputs, a
projection of each frozen feature (poster, plot text: LayerNorm then Linear) and of the trainable tabular
encoder's output (year, genres...), followed by a small MLP. keep_i is 0 for an item with no training
interactions (a cold item is scored from content alone) and, during training, for a random share of items
(id dropout, as DropoutNet does), so the content part learns to carry an item by itself.

User tower: z_u = normalise(MLP([id_u · keep_u, tabular_u, mean of history vectors, mean of recent
vectors])). The history is every item the user interacted with; "recent" is the last `recent` of them (the
order matters: on MovieLens the next film is much closer to the last few than to the average one). A history
vector is an item's own history embedding plus a linear map of its content, so cold items in a history count.

Score(u, i) = cos(z_u, v_i) / temperature. Item vectors are independent of the user, so the catalogue is
encoded once and searched with FAISS at serving time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polymodal.encoders import build_encoder


@dataclass
class TowerConfig:
    """The architecture (saved in config.json so a run folder rebuilds it)."""

    n_users: int
    n_items: int
    dim: int = 64
    hidden: int = 256
    dropout: float = 0.2
    temperature: float = 0.1
    item_id: bool = True
    user_id: bool = True
    history: bool = True
    recent: int = 10  # last N history items pooled on their own; 0: none
    item_frozen: dict[str, int] = field(default_factory=dict)  # frozen item input → feature width
    item_tabular: tuple[int, list[int]] | None = None  # (numeric columns, category cardinalities)
    user_tabular: tuple[int, list[int]] | None = None

    @property
    def has_content(self) -> bool:
        return bool(self.item_frozen) or self.item_tabular is not None


def _tabular(shape: tuple[int, list[int]] | None, hidden: int, dropout: float) -> nn.Module | None:
    if shape is None:
        return None
    n_numeric, cards = shape
    return build_encoder("tabular", "mlp", n_numeric=n_numeric, cardinalities=list(cards), hidden=hidden,
                         out_dim=hidden, dropout=dropout)


class ItemContent(nn.Module):
    """Item content (frozen features + tabular) → (N, dim); absent inputs contribute nothing."""

    def __init__(self, cfg: TowerConfig) -> None:
        super().__init__()
        h = cfg.hidden
        self.keys = sorted(cfg.item_frozen)
        self.frozen = nn.ModuleDict({k: nn.Sequential(nn.LayerNorm(d), nn.Linear(d, h))
                                     for k, d in sorted(cfg.item_frozen.items())})
        self.tabular = _tabular(cfg.item_tabular, h, cfg.dropout)
        self.out = nn.Sequential(nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(h, cfg.dim))

    def forward(self, frozen: dict[str, Tensor], present: dict[str, Tensor], tabular: dict[str, Tensor]) -> Tensor:
        parts = [self.frozen[k](frozen[k]) * present[k].unsqueeze(-1).to(frozen[k].dtype) for k in self.keys]
        if self.tabular is not None:
            parts.append(self.tabular(tabular))
        return self.out(torch.stack(parts).sum(0))


class TwoTower(nn.Module):
    def __init__(self, cfg: TowerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        if not cfg.item_id and not cfg.has_content:
            raise ValueError("the item tower needs the item id or at least one content column")

        def table(n: int) -> nn.Embedding:
            emb = nn.Embedding(n, d)
            nn.init.normal_(emb.weight, std=0.05)
            return emb

        self.item_emb = table(cfg.n_items) if cfg.item_id else None
        self.content = ItemContent(cfg) if cfg.has_content else None
        pools = (1 if cfg.history else 0) + (1 if cfg.history and cfg.recent > 0 else 0)
        self.pool_emb = nn.ModuleList(table(cfg.n_items) for _ in range(pools)) if cfg.item_id else None
        self.pool_content = nn.ModuleList(nn.Linear(d, d, bias=False) for _ in range(pools)) \
            if cfg.has_content else None
        self.user_emb = table(cfg.n_users) if cfg.user_id else None
        self.user_tab = _tabular(cfg.user_tabular, cfg.hidden, cfg.dropout)
        width = d * (pools + (1 if cfg.user_id else 0)) + (cfg.hidden if self.user_tab is not None else 0)
        if width == 0:
            raise ValueError("the user tower needs the user id, user columns or the history")
        self.user_mlp = nn.Sequential(nn.Linear(width, cfg.hidden), nn.ReLU(), nn.Dropout(cfg.dropout),
                                      nn.Linear(cfg.hidden, d))

    # ---- items -------------------------------------------------------------------------------------
    def item_parts(self, items: dict[str, dict[str, Tensor]], keep: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(item vectors (N, dim), pooled-history tables [(N, dim)]) for every catalogue item.

        `items`: {"frozen", "present", "tabular"} tensors with N rows; `keep` (N,): 1 where the id embedding
        counts (warm items not dropped), 0 where the item is served from content alone."""
        keep = keep.unsqueeze(-1).float()
        content = self.content(items["frozen"], items["present"], items["tabular"]) \
            if self.content is not None else None
        vec = 0
        if self.item_emb is not None:
            vec = self.item_emb.weight * keep
        if content is not None:
            vec = vec + content
        pools = []
        for j in range(len(self.pool_emb) if self.pool_emb is not None else len(self.pool_content or [])):
            t = 0
            if self.pool_emb is not None:
                t = self.pool_emb[j].weight * keep
            if content is not None:
                t = t + self.pool_content[j](content)
            pools.append(t)
        return F.normalize(vec, dim=-1), pools

    # ---- users -------------------------------------------------------------------------------------
    def user_vectors(self, users: Tensor, user_keep: Tensor, user_tabular: dict[str, Tensor],
                     pools: list[Tensor], bags: list[tuple[Tensor, Tensor]]) -> Tensor:
        """(B, dim) user vectors. `bags[j]` = (item indices, offsets) of pool j (history, then recent) per
        user, as `F.embedding_bag` takes them; empty bags pool to zero."""
        parts = []
        if self.user_emb is not None:
            parts.append(self.user_emb(users) * user_keep.unsqueeze(-1).float())
        if self.user_tab is not None:
            parts.append(self.user_tab(user_tabular))
        for table, (idx, offsets) in zip(pools, bags):
            parts.append(F.embedding_bag(idx, table, offsets, mode="mean"))
        return F.normalize(self.user_mlp(torch.cat(parts, dim=-1)), dim=-1)

    def scores(self, user_vecs: Tensor, item_vecs: Tensor) -> Tensor:
        return user_vecs @ item_vecs.T / self.cfg.temperature
