"""Run by tests/test_distributed.py: feature extraction for one rank of a torchrun-style launch (RANK and
WORLD_SIZE set in the environment before any process group), into a cache shared by the ranks."""

from __future__ import annotations

import json
import sys

import numpy as np
import torch

from polymodal.data.preprocess import Preprocessor
from polymodal.data.readers import read_table
from polymodal.data.schema import infer_schema
from polymodal.encoders import build_encoder
from polymodal.encoders.cache import precompute_features


def main(table: str, cache: str, out: str) -> None:
    df = read_table(table)
    torch.manual_seed(0)  # the same random small-cnn in every process
    enc = build_encoder("image", "small-cnn", image_size=16)
    schema = infer_schema(df, "label", {"image": "image"}, "binary")
    prep = Preprocessor.fit(df, schema, {"image": enc.preprocess_config()})
    feats, problems, stats = precompute_features(df, prep, {"image": enc}, ["image"], cache, batch_size=8)
    f, present = feats["image"]
    np.save(out + ".npy", f)
    with open(out + ".json", "w") as fh:
        json.dump({"stats": stats, "present": present.tolist(),
                   "problems": sorted([p.row, p.column] for p in problems)}, fh)


if __name__ == "__main__":
    main(*sys.argv[1:4])
