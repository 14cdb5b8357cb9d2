"""`Recommender`: the front of cross-modal recommendation (fit / evaluate / top_k / save / load).

    rec = Recommender.fit("interactions.csv", users="users.csv", items="items.csv")
    rec.top_k("42", k=10)            # [{"item": "50", "score": 9.1, "cold": False}, ...]
    rec.evaluate("splits/test.csv")  # HR/NDCG/MRR (1 + N candidates) and full-ranking Recall/NDCG
    rec.save("runs/rec"); Recommender.load("runs/rec")

Every user and item of the side tables is in the model, with or without interactions: one with none is
"cold" and served from its columns alone (an item's poster, plot, year...; a user's age, occupation...).
The item tower's vectors are indexed in FAISS (exact inner product), so top-k is one index search whatever
the catalogue size; items the user already interacted with are never returned.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from polymodal.data.readers import as_table
from polymodal.errors import DataError, PolymodalError
from polymodal.recommend.data import (
    ITEM,
    NEGATIVES,
    USER,
    Vocab,
    id_strings,
    is_holdout_table,
    leave_one_out,
    read_holdout,
    read_interactions,
    read_side_table,
    sequences,
)
from polymodal.recommend.features import SideData, SideSpec, fit_side
from polymodal.recommend.metrics import full_ranking_metrics, sampled_metrics
from polymodal.recommend.model import TowerConfig, TwoTower
from polymodal.recommend.run_folder import RECOMMENDATION_RUN, read_run, write_run
from polymodal.recommend.train import Histories, TrainConfig, train_two_tower, user_vectors
from polymodal.retrieval.index import VectorIndex
from polymodal.training.artifacts import damaged

Log = Callable[[str], None]
MODEL_OPTIONS = {f.name for f in fields(TowerConfig)} - {"n_users", "n_items", "item_frozen", "item_tabular",
                                                          "user_tabular"}


def _quiet(_: str) -> None:
    pass


def candidate_matrix(holdout: pd.DataFrame, items: Vocab) -> np.ndarray:
    """(N, 1 + M) item indices: the held-out item, then its negatives; -1 pads rows with fewer negatives."""
    src = holdout.attrs.get("source")
    pos = items.lookup(holdout[ITEM].tolist(), "item", src, holdout.index, "test_item_id")
    width = max((len(n) for n in holdout[NEGATIVES]), default=0)
    out = np.full((len(holdout), 1 + width), -1, np.int64)
    out[:, 0] = pos
    for r, (row, negs) in enumerate(zip(holdout.index, holdout[NEGATIVES])):
        out[r, 1:1 + len(negs)] = items.lookup(list(negs), "item", src, [row] * len(negs), "negative_item_ids")
    return out


class Recommender:
    """A trained two-tower recommender with its catalogue, the users' histories and a FAISS item index."""

    kind = RECOMMENDATION_RUN

    def __init__(self, model: TwoTower, users: Vocab, items: Vocab, hist: Histories, warm: np.ndarray,
                 user_warm: np.ndarray, item_spec: SideSpec, user_spec: SideSpec, item_data: SideData,
                 user_data: SideData, settings: dict, metrics: dict | None = None,
                 history: list[dict] | None = None, model_id: str = "") -> None:
        self.model, self.users, self.items, self.hist = model.eval(), users, items, hist
        self.warm, self.user_warm = np.asarray(warm, bool), np.asarray(user_warm, bool)
        self.item_spec, self.user_spec, self.item_data, self.user_data = item_spec, user_spec, item_data, user_data
        self.settings = settings  # column names, threshold, train config: what config.json records
        self.metrics, self.history, self.model_id = metrics or {}, history or [], model_id
        self._item_vecs: torch.Tensor | None = None
        self._pools: list[torch.Tensor] = []
        self._index: VectorIndex | None = None

    # ---- fitting ------------------------------------------------------------------------------------
    @classmethod
    def fit(cls, interactions: pd.DataFrame | str | os.PathLike, users: pd.DataFrame | str | os.PathLike | None = None,
            items: pd.DataFrame | str | os.PathLike | None = None, *, user_col: str = "user_id",
            item_col: str = "item_id", rating_col: str | None = "rating", time_col: str | None = "timestamp",
            threshold: float | None = None, user_columns: list[str] | None = None,
            item_columns: list[str] | None = None, user_column_types: str | dict | None = None,
            item_column_types: str | dict | None = None, encoders: dict[str, str] | None = None,
            cache_dir: str | os.PathLike | None = None, on_bad_files: str = "error", model: dict | None = None,
            train: TrainConfig | dict | None = None, validation: bool = True, valid_negatives: int = 99,
            log: Log = print) -> Recommender:
        """Train on `interactions` (user, item[, rating][, time] rows; each kept row is a positive).

        `users` / `items`: side tables keyed by `user_col` / `item_col`, whose columns (all but the id, or
        `user_columns` / `item_columns`; [] for none) feed the towers: image, text, audio and video columns
        through the frozen encoders and the feature cache, numeric and categorical ones through the tabular
        encoder. Their ids join the catalogue even without interactions (cold ids). `model`: TowerConfig
        options (dim, hidden, item_id, user_id, history, recent, temperature...); `train`: TrainConfig.
        `validation`: hold out each user's latest interaction against `valid_negatives` sampled items for
        early stopping (the model trains on the rest; serving uses every interaction)."""
        train_cfg = train if isinstance(train, TrainConfig) else TrainConfig(**(train or {}))
        train_cfg.check()
        unknown = sorted(set(model or {}) - MODEL_OPTIONS)
        if unknown:
            raise PolymodalError(f"unknown model option {unknown[0]!r}; use {', '.join(sorted(MODEL_OPTIONS))}")
        frame = read_interactions(interactions, user_col, item_col, rating_col, time_col, threshold)
        if len(frame) == 0:
            raise DataError("the interaction table has no rows", file=frame.attrs.get("source"))
        user_df = None if users is None else read_side_table(users, user_col, "user")
        item_df = None if items is None else read_side_table(items, item_col, "item")
        user_vocab = Vocab(_catalogue(user_df, user_col, frame[USER]))
        item_vocab = Vocab(_catalogue(item_df, item_col, frame[ITEM]))
        log(f"{len(frame):,} interactions, {len(user_vocab):,} users, {len(item_vocab):,} items")
        item_spec, item_data = fit_side(item_df, item_col, item_vocab.ids, "item", item_columns, item_column_types,
                                        encoders, cache_dir=cache_dir, on_bad_files=on_bad_files, log=log)
        user_spec, user_data = fit_side(user_df, user_col, user_vocab.ids, "user", user_columns, user_column_types,
                                        encoders, allow_frozen=False, cache_dir=cache_dir, log=log)
        fit_frame, valid = frame, None
        if validation:
            fit_frame, holdout = leave_one_out(frame, valid_negatives, train_cfg.seed, item_vocab.ids)
            if len(holdout):
                valid = (user_vocab.lookup(holdout[USER].tolist(), "user"), candidate_matrix(holdout, item_vocab))
                log(f"validation: the latest interaction of {len(holdout):,} users vs up to {valid_negatives} "
                    "sampled items")
        fit_hist = Histories(sequences(fit_frame, user_vocab, item_vocab))
        warm = np.bincount(fit_hist.flat, minlength=len(item_vocab)) > 0
        user_warm = fit_hist.length > 0
        cfg = TowerConfig(n_users=len(user_vocab), n_items=len(item_vocab), **(model or {}),
                          item_frozen=item_spec.frozen_dims, item_tabular=item_spec.tabular_shape,
                          user_tabular=user_spec.tabular_shape)
        torch.manual_seed(train_cfg.seed)
        net = TwoTower(cfg)
        inputs = model_inputs(item_data, user_data, warm, user_warm)
        history = train_two_tower(net, inputs, fit_hist, train_cfg, valid=valid, log=log)
        best = max(history, key=lambda r: r.get("valid_ndcg@10", -r["epoch"])) if valid is not None else history[-1]
        metrics = {k.removeprefix("valid_"): v for k, v in best.items() if k.startswith("valid_")}
        if metrics:
            metrics.update(epoch=best["epoch"], split="validation: each user's latest interaction")
        settings = {"user_col": user_col, "item_col": item_col, "rating_col": rating_col, "time_col": time_col,
                    "threshold": threshold, "train": train_cfg.to_dict(), "validation": validation,
                    "sources": {"interactions": frame.attrs.get("source"),
                                "users": None if user_df is None else user_df.attrs.get("source"),
                                "items": None if item_df is None else item_df.attrs.get("source")}}
        hist = Histories(sequences(frame, user_vocab, item_vocab))
        return cls(net, user_vocab, item_vocab, hist, warm, user_warm, item_spec, user_spec, item_data, user_data,
                   settings, metrics, history)

    # ---- vectors ------------------------------------------------------------------------------------
    @property
    def config(self) -> TowerConfig:
        return self.model.cfg

    def _item_side(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self._item_vecs is None:
            inputs = model_inputs(self.item_data, self.user_data, self.warm, self.user_warm)
            with torch.no_grad():
                self._item_vecs, self._pools = self.model.item_parts(inputs["items"], inputs["warm"])
        return self._item_vecs, self._pools

    def item_vectors(self) -> np.ndarray:
        """(items, dim) unit vectors of the item tower, in catalogue order (cold items from content alone)."""
        return self._item_side()[0].numpy()

    def user_vectors(self, user_idx: np.ndarray) -> np.ndarray:
        """(n, dim) unit vectors of the user tower (whole histories; cold users from their columns)."""
        _, pools = self._item_side()
        inputs = model_inputs(self.item_data, self.user_data, self.warm, self.user_warm)
        with torch.no_grad():
            return user_vectors(self.model, inputs, pools, self.hist, np.asarray(user_idx, np.int64)).numpy()

    def scores(self, user_idx: np.ndarray) -> np.ndarray:
        """(n, items) model scores (cosine / temperature), brute force."""
        return self.user_vectors(user_idx) @ self.item_vectors().T / self.config.temperature

    @property
    def index(self) -> VectorIndex:
        """Exact FAISS inner-product index of the item vectors (built on first use; cheap to rebuild)."""
        if self._index is None:
            self._index = VectorIndex.build(self.item_vectors(), model_id=self.model_id or "unsaved",
                                            ids=list(range(len(self.items))), kind="flat")
        return self._index

    def user_index(self, user: str | int, source: str | None = None) -> int:
        """The catalogue row of `user`; an unknown id is a DataError that says how many users the run knows."""
        uid = id_strings(pd.Series([user]))[0]
        if uid not in self.users.index:
            some = ", ".join(self.users.ids[:3])
            raise DataError(f"unknown user id {uid!r}: this run knows {len(self.users):,} users ({some}, ...)",
                            file=source, column=self.settings.get("user_col", "user"))
        return self.users.index[uid]

    def seen(self, user: int) -> np.ndarray:
        return self.hist.of(user)

    # ---- answering -----------------------------------------------------------------------------------
    def top_k(self, user: str | int, k: int = 10, exclude_seen: bool = True) -> list[dict]:
        """The `k` best items for `user`, best first: {"item", "score", "cold"}; never an item the user
        already interacted with (unless `exclude_seen=False`)."""
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise DataError(f"k must be a positive whole number, got {k!r}", column="k")
        u = self.user_index(user)
        seen = set(self.seen(u).tolist()) if exclude_seen else set()
        want = min(len(self.items), int(k) + len(seen))
        query = self.user_vectors(np.array([u]))
        cos, rows = self.index.search_rows(query, want)
        out = []
        for c, r in zip(cos[0], rows[0]):
            if r < 0 or int(r) in seen:
                continue
            out.append({"item": self.items.ids[r], "score": float(c) / self.config.temperature,
                        "cold": not bool(self.warm[r])})
            if len(out) == k:
                break
        return out

    def evaluate(self, data: pd.DataFrame | str | os.PathLike, ks: Sequence[int] = (10,),
                 candidates: Sequence[str] | None = None) -> dict:
        """Scores on held-out data the model did not train on.

        A split table (user_id, test_item_id, negative_item_ids; or columns user, item, negatives) gives the
        sampled protocol (HR@K, NDCG@K, MRR: the held-out item among its negatives) and the full-ranking
        Recall@K / NDCG@K (the held-out item among every item the user has not interacted with). An
        interaction table gives the full-ranking metrics, every row of a user being relevant. `candidates`
        restricts the full ranking to these items (e.g. the cold ones)."""
        if isinstance(data, pd.DataFrame) and {USER, ITEM}.issubset(data.columns):
            frame = data  # already normalised (user, item[, negatives])
        else:
            table = as_table(data)  # read once: its columns say which kind of table it is
            if is_holdout_table(table):
                frame = read_holdout(table)
            else:
                s = self.settings
                frame = read_interactions(table, s["user_col"], s["item_col"], s["rating_col"], s["time_col"],
                                          s["threshold"])
        src = frame.attrs.get("source")
        user_idx = self.users.lookup(frame[USER].tolist(), "user", src, frame.index, "user_id")
        out: dict = {}
        if NEGATIVES in frame.columns:
            cand = candidate_matrix(frame, self.items)
            s = self.scores(user_idx)
            picked = np.take_along_axis(s, np.maximum(cand, 0), axis=1)
            picked = np.where(cand >= 0, picked, np.nan)
            out.update(sampled_metrics(picked[:, 0], picked[:, 1:], ks))
        item_idx = self.items.lookup(frame[ITEM].tolist(), "item", src, frame.index, "item_id")
        order = np.unique(user_idx)
        relevant = [np.unique(item_idx[user_idx == u]) for u in order]
        cols = np.arange(len(self.items)) if candidates is None else self.items.lookup(list(candidates), "item")
        pos = {c: j for j, c in enumerate(cols)}
        s = self.scores(order)[:, cols]
        rel = [np.array([pos[i] for i in r if i in pos], np.int64) for r in relevant]
        exclude = [np.array([pos[i] for i in np.setdiff1d(self.seen(u), r) if i in pos], np.int64)
                   for u, r in zip(order, relevant)]
        full = full_ranking_metrics(s, rel, exclude, ks)
        out.update({k: v for k, v in full.items() if k != "users"}, full_ranking_users=full["users"])
        leaked = sum(len(np.intersect1d(self.seen(u), r)) for u, r in zip(order, relevant))
        if leaked:
            out["warning"] = (f"{leaked} held-out interactions were also in the training data: the scores "
                              "are optimistic")
        return out

    # ---- run folder ----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, overwrite: bool = False) -> None:
        """Write the run folder (atomic files, manifest.json last); it loads with no network."""
        tensors = {f"model/{k}": v for k, v in self.model.state_dict().items()}
        tensors.update(self.item_data.tensors("items"))
        tensors.update(self.user_data.tensors("users"))
        tensors.update({"hist/flat": torch.from_numpy(self.hist.flat),
                        "hist/length": torch.from_numpy(self.hist.length),
                        "warm": torch.from_numpy(self.warm.astype(np.uint8)),
                        "user_warm": torch.from_numpy(self.user_warm.astype(np.uint8))})
        config = {"kind": RECOMMENDATION_RUN, "model": asdict(self.config), **self.settings}
        prep = {"users": self.users.ids, "items": self.items.ids, "user_spec": self.user_spec.to_dict(),
                "item_spec": self.item_spec.to_dict()}
        self.model_id = write_run(path, tensors, config, prep, self.metrics, self.history, self.describe(),
                                  overwrite)
        self._index = None  # its model id changes with the saved weights

    @classmethod
    def load(cls, path: str | os.PathLike) -> Recommender:
        """A saved run folder (checked against its manifest), with no network and no encoder weights: the
        item and user columns were encoded at fit time and are stored in the folder."""
        tensors, config, prep, metrics, model_id = read_run(path, RECOMMENDATION_RUN)
        where = f"{path}/config.json"
        try:
            cfg = dict(config["model"])
            for key in ("item_tabular", "user_tabular"):
                if cfg.get(key) is not None:
                    cfg[key] = (int(cfg[key][0]), [int(c) for c in cfg[key][1]])
            model = TwoTower(TowerConfig(**cfg))
            model.load_state_dict({k.removeprefix("model/"): v for k, v in tensors.items()
                                   if k.startswith("model/")})
            users, items = Vocab(list(prep["users"])), Vocab(list(prep["items"]))
            hist = Histories([])
            hist.flat, hist.length = tensors["hist/flat"].numpy(), tensors["hist/length"].numpy()
            hist.start = np.concatenate([[0], np.cumsum(hist.length)[:-1]]).astype(np.int64)
            settings = {k: v for k, v in config.items() if k not in ("kind", "model", "polymodal_version",
                                                                     "model_id")}
            return cls(model, users, items, hist, tensors["warm"].numpy().astype(bool),
                       tensors["user_warm"].numpy().astype(bool), SideSpec.from_dict(prep["item_spec"]),
                       SideSpec.from_dict(prep["user_spec"]), SideData.from_tensors(tensors, "items"),
                       SideData.from_tensors(tensors, "users"), settings, metrics, model_id=model_id)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # a hand-edited or foreign folder
            raise damaged(Path(where), f"{type(exc).__name__}: {exc}") from None

    def describe(self) -> dict:
        return {"kind": self.kind, "users": len(self.users), "items": len(self.items),
                "cold_items": int((~self.warm).sum()), "cold_users": int((~self.user_warm).sum()),
                "interactions": int(len(self.hist.flat)), "item_columns": self.item_spec.columns,
                "user_columns": self.user_spec.columns, "model": asdict(self.config)}


def model_inputs(item_data: SideData, user_data: SideData, warm: np.ndarray, user_warm: np.ndarray) -> dict:
    """The tensors TwoTower / train_two_tower read."""
    def t(d: dict) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in d.items()}

    return {"items": {"frozen": t(item_data.frozen), "present": t(item_data.present),
                      "tabular": t(item_data.tabular)},
            "warm": torch.from_numpy(np.asarray(warm, bool)),
            "user_warm": torch.from_numpy(np.asarray(user_warm, bool)),
            "user_tabular": t(user_data.tabular)}


def _catalogue(table: pd.DataFrame | None, id_col: str, seen: pd.Series) -> list[str]:
    """The side table's ids in its order, then ids that only the interactions name (first-seen order)."""
    ids = [] if table is None else list(table[id_col])
    known = set(ids)
    return ids + [v for v in dict.fromkeys(seen) if v not in known]
