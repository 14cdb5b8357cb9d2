"""polymodal: multimodal deep learning on tables of image, text, audio and tabular columns."""

from __future__ import annotations

from polymodal.version import __version__

__all__ = ["MultimodalPredictor", "__version__"]


def __getattr__(name: str):
    # Lazy so that `import polymodal` (e.g. for the CLI's --help) does not import torch.
    if name == "MultimodalPredictor":
        from polymodal.predictor import MultimodalPredictor

        return MultimodalPredictor
    raise AttributeError(name)
