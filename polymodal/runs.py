"""Run folders of every kind, loaded through one function: `load_run(path)`.

| kind | written by | loads as |
|---|---|---|
| table | `polymodal fit` (classify / regress / multi-task) | MultimodalPredictor |
| generation | `polymodal fit --task caption / vqa-open` | MultimodalPredictor (kind "generation") |
| compressed | `polymodal compress` | MultimodalPredictor, or OnnxPredictor for an ONNX artefact |
| alignment | `polymodal align` | retrieval.AlignedModel |
| ensemble | `polymodal fit --preset balanced/best` | ensemble.EnsemblePredictor |
| recommendation | `polymodal recommend fit` | recommend.Recommender |

Model kinds are rebuilt by `training.build.rebuild` (compressed ones by `compress.artifacts.rebuild_compressed`,
which calls it), so there is one rebuild path. The CLI and `serve/` load through here.
"""

from __future__ import annotations

import os
from pathlib import Path

from polymodal.compress.artifacts import is_compressed
from polymodal.ensemble import ENSEMBLE_RUN, EnsemblePredictor
from polymodal.errors import PolymodalError
from polymodal.predictor import MultimodalPredictor
from polymodal.recommend.recommender import Recommender
from polymodal.recommend.run_folder import RECOMMENDATION_RUN
from polymodal.retrieval.aligned import AlignedModel
from polymodal.retrieval.config import is_alignment_run
from polymodal.training.artifacts import CONFIG, read_json
from polymodal.training.build import GENERATION_RUN, TABLE_RUN

ALIGNMENT, COMPRESSED = "alignment", "compressed"
RUN_KINDS = (TABLE_RUN, GENERATION_RUN, COMPRESSED, ALIGNMENT, RECOMMENDATION_RUN, ENSEMBLE_RUN)


def run_kind(path: str | os.PathLike) -> str:
    """Which kind of run folder `path` is (see the module table); a clear error when it is none."""
    path = Path(path)
    if is_alignment_run(path):
        return ALIGNMENT
    if is_compressed(path):
        return COMPRESSED
    config = path / CONFIG
    if not config.exists():
        raise PolymodalError(f"{path} is not a polymodal run folder: {CONFIG} is missing (train one with "
                             "`polymodal fit`)")
    kind = read_json(config).get("kind", TABLE_RUN)
    if kind not in RUN_KINDS:
        raise PolymodalError(f"{config} names an unknown run kind {kind!r} (known: {', '.join(RUN_KINDS)})")
    return kind


def load_run(path: str | os.PathLike, device: str | None = None):
    """The front for any run folder: a `contracts.Predictor` for model kinds, an AlignedModel for alignment
    runs, a Recommender for recommendation runs, an EnsemblePredictor for ensembles. Loads offline; GPU-trained
    runs load on CPU unless `device` says otherwise."""
    kind = run_kind(path)
    if kind == ALIGNMENT:
        return AlignedModel.load(path)
    if kind == RECOMMENDATION_RUN:
        return Recommender.load(path)
    if kind == ENSEMBLE_RUN:
        return EnsemblePredictor.load(path)
    return MultimodalPredictor.load(path, device)
