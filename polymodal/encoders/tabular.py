"""Tabular encoder: all numeric and categorical columns of a row, encoded together.

Input: {"numeric": (B, n_num) float, standardised with NaN → 0; "numeric_missing": (B, n_num) 0/1;
"categorical": (B, n_cat) long, 0 = missing/unseen, 1..cardinality = vocabulary index}.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from polymodal.encoders.base import Encoder
from polymodal.errors import PolymodalError


def embedding_dim(cardinality: int) -> int:
    """Embedding width for a categorical column: grows with its vocabulary, capped at 32."""
    return min(32, (cardinality + 1) // 2 + 1)


class TabularMLP(Encoder):
    """[numeric, numeric_missing, per-column embeddings] → (Linear, LayerNorm, ReLU, Dropout) x 2.

    `tokens` gives one token per column (numeric first, then categorical), for token-level fusion:
    numeric column j → value·w_j + missing·m_j + b_j (FT-Transformer's numeric tokenizer plus a missing
    bit); categorical column → a per-column linear map of the same embedding the MLP uses.
    """

    def __init__(self, n_numeric: int, cardinalities: list[int], hidden: int = 128, out_dim: int = 128,
                 dropout: float = 0.1, token_dim: int | None = None) -> None:
        super().__init__()
        if n_numeric == 0 and not cardinalities:
            raise PolymodalError("the tabular encoder needs at least one numeric or categorical column")
        self.n_numeric = n_numeric
        self.cardinalities = [int(c) for c in cardinalities]
        # index 0 is reserved for missing/unseen, so each table has cardinality + 1 rows
        self.embeddings = nn.ModuleList(nn.Embedding(c + 1, embedding_dim(c)) for c in self.cardinalities)
        in_dim = 2 * n_numeric + sum(embedding_dim(c) for c in self.cardinalities)
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, out_dim), nn.LayerNorm(out_dim), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.out_dim = out_dim
        self.token_dim = token_dim or out_dim
        d = self.token_dim
        self.num_weight = nn.Parameter(torch.randn(n_numeric, d) / d ** 0.5)
        self.num_missing = nn.Parameter(torch.randn(n_numeric, d) / d ** 0.5)
        self.num_bias = nn.Parameter(torch.zeros(n_numeric, d))
        self.cat_proj = nn.ModuleList(nn.Linear(embedding_dim(c), d) for c in self.cardinalities)
        self.pretrained = False
        self.cache_id = f"tabular:mlp:{n_numeric}:{self.cardinalities}"

    def _parts(self, x: dict[str, Tensor]) -> tuple[Tensor, Tensor, list[Tensor]]:
        first = next(iter(x.values()))
        num = x.get("numeric", first.new_zeros(first.shape[0], 0)).float()
        miss = x.get("numeric_missing", torch.zeros_like(num)).float()
        cat = x.get("categorical")
        embs = [emb(cat[:, j]) for j, emb in enumerate(self.embeddings)]
        return num, miss, embs

    def forward(self, x: dict[str, Tensor]) -> Tensor:
        num, miss, embs = self._parts(x)
        return self.mlp(torch.cat([num, miss, *embs], dim=-1))

    def tokens(self, x: dict[str, Tensor]) -> Tensor:
        """(B, n_numeric + n_categorical, token_dim)."""
        num, miss, embs = self._parts(x)
        num_tok = num.unsqueeze(-1) * self.num_weight + miss.unsqueeze(-1) * self.num_missing + self.num_bias
        cat_tok = [proj(e) for proj, e in zip(self.cat_proj, embs, strict=True)]
        return torch.cat([num_tok, *(t.unsqueeze(1) for t in cat_tok)], dim=1)


BUILTIN: dict[str, Callable[..., Encoder]] = {"mlp": TabularMLP}


def build_tabular_encoder(name: str, **opts) -> Encoder:
    if name not in BUILTIN:
        raise PolymodalError(f"unknown tabular encoder '{name}': use one of {sorted(BUILTIN)}")
    return BUILTIN[name](**opts)
