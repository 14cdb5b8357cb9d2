"""Quality presets and the settings of an ensemble fit (the `--preset`, `--time-limit`, `--eval-metric`
flags). `fast` is the single fusion network `polymodal fit` always trained; `balanced` and `best` bag a
portfolio of members over k folds and combine them by ensemble selection (ensemble/fit.py)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from polymodal.errors import PolymodalError
from polymodal.fusion import FUSIONS

FAST, BALANCED, BEST = "fast", "balanced", "best"
PRESETS = (FAST, BALANCED, BEST)

# Models over the feature matrix (ensemble/members.py), with their share of a bagging repeat's time budget;
# a fusion network ("fusion:<name>") gets FUSION_SHARE.
MATRIX_SHARES = {"linear": 1.0, "knn": 1.0, "lightgbm": 4.0, "extra_trees": 2.0}
MATRIX_MEMBERS = tuple(MATRIX_SHARES)
FUSION_SHARE = 4.0

# preset → (members, folds, most bagging repeats). Members are names in ensemble/members.py's MEMBERS;
# "fusion:<name>" is the fusion network of the fit pipeline with that fusion.
PRESET_MEMBERS: dict[str, tuple[tuple[str, ...], int, int]] = {
    BALANCED: (("linear", "knn", "lightgbm", "fusion:concat"), 5, 1),
    BEST: (("linear", "knn", "lightgbm", "extra_trees", "fusion:concat", "fusion:gated"), 5, 3),
}


@dataclass(kw_only=True)
class EnsembleSettings:
    """How an ensemble is built; saved in the run folder's ensemble.json."""

    preset: str = BEST
    time_limit: float | None = None  # seconds for the whole fit (features, members, selection, saving)
    eval_metric: str | None = None  # None: accuracy (classes), f1_macro (multi-label), rmse, score (multi-task)
    folds: int | None = None  # None: the preset's
    repeats: int | None = None  # most bagging repeats (each with new folds) while time remains
    members: list[str] = field(default_factory=list)  # empty: the preset's
    selection_rounds: int = 25  # Caruana et al.: greedy additions with replacement

    def __post_init__(self) -> None:
        if self.preset not in (BALANCED, BEST):
            raise PolymodalError(f"an ensemble preset is {BALANCED} or {BEST}, not {self.preset!r} "
                                 f"(--preset {FAST} trains one fusion network)")
        if self.time_limit is not None and not self.time_limit > 0:
            raise PolymodalError(f"--time-limit must be a positive number of seconds, not {self.time_limit!r}")
        default_members, folds, repeats = PRESET_MEMBERS[self.preset]
        self.members = list(self.members or default_members)
        for name in self.members:
            check_member(name)
        self.folds = self.folds or folds
        self.repeats = self.repeats or repeats
        if self.folds < 2:
            raise PolymodalError(f"bagging needs at least 2 folds, not {self.folds}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EnsembleSettings:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def check_member(name: str) -> None:
    """A member name: one of MATRIX_MEMBERS or fusion:<name of a fusion in polymodal.fusion>."""
    if name in MATRIX_MEMBERS or (name.startswith("fusion:") and name.split(":", 1)[1] in FUSIONS):
        return
    raise PolymodalError(f"unknown ensemble member {name!r}: one of {', '.join(MATRIX_MEMBERS)} or fusion:<fusion> "
                         f"with a fusion in {', '.join(FUSIONS)}")


def check_preset(preset: str) -> str:
    if preset not in PRESETS:
        raise PolymodalError(f"--preset must be one of {', '.join(PRESETS)}, not {preset!r}")
    return preset
