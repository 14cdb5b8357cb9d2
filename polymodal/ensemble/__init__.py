"""Quality presets: a portfolio of members (fusion networks, LightGBM, extra trees, linear, k-NN on tabular
columns and cached embeddings), k-fold bagging, ensemble selection and temperature scaling under a time
budget; the ensemble run folder and its front, EnsemblePredictor."""

from polymodal.ensemble.config import BALANCED, BEST, FAST, PRESETS, EnsembleSettings, check_preset
from polymodal.ensemble.predictor import EnsemblePredictor
from polymodal.ensemble.run_folder import ENSEMBLE_RUN, is_ensemble

__all__ = ["BALANCED", "BEST", "ENSEMBLE_RUN", "FAST", "PRESETS", "EnsemblePredictor", "EnsembleSettings",
           "check_preset", "is_ensemble"]
