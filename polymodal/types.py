"""Names and small types shared by every stage (the contracts in docs/design.md)."""

from __future__ import annotations

from typing import Literal

import torch

# Column modalities that schema inference can assign.
IMAGE = "image"
TEXT = "text"
AUDIO = "audio"
VIDEO = "video"
TIMESERIES = "timeseries"  # numeric arrays (T,) or (T, C) per row: list cells or .npy/.csv paths
NUMERIC = "numeric"
CATEGORICAL = "categorical"
ID = "id"
MODALITIES = (IMAGE, TEXT, AUDIO, VIDEO, TIMESERIES, NUMERIC, CATEGORICAL, ID)
MEDIA = (IMAGE, AUDIO, VIDEO)
# All numeric and categorical columns are encoded together by one tabular MLP under this key.
TABULAR = "tabular"

Modality = Literal["image", "text", "audio", "video", "timeseries", "numeric", "categorical", "id"]

# Features keyed by input name (a column name, or "tabular"), each (B, D) or (B, T, D).
Features = dict[str, torch.Tensor]
# Presence mask per input: (B,) bool, False where the row's value is missing.
Present = dict[str, torch.Tensor]
