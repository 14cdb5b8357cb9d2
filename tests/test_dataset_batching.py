"""The batched gather path of TableDataset gives exactly the per-row + Collator batch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from polymodal.data.dataset import Collator, TableDataset
from polymodal.data.preprocess import Preprocessor
from polymodal.data.schema import infer_schema


def test_gathered_batch_equals_collated_rows():
    rng = np.random.default_rng(0)
    n = 50
    df = pd.DataFrame({"img": [f"{i}.png" for i in range(n)], "size": rng.normal(size=n),
                       "shop": rng.choice(list("abc"), n), "y": rng.choice(["p", "q", "r"], n)},
                      index=np.arange(100, 100 + n))
    schema = infer_schema(df, "y", {"img": "image"}, "multiclass")
    prep = Preprocessor.fit(df, schema, {"image": {"image_size": 8, "mean": [0.5] * 3, "std": [0.5] * 3}})
    feats = {"img": (rng.normal(size=(n, 6)).astype(np.float16), rng.random(n) > 0.2)}
    ds = TableDataset(df, prep, feats, train=True)
    assert not ds.values  # nothing to decode: the gather path applies
    idx = [3 * n + 7, 12, n - 1, 0, 2 * n + 12]  # epoch-encoded indices, as EpochSampler yields
    fast = Collator(prep)(ds.__getitems__(idx))
    slow = Collator(prep)([ds[i] for i in idx])
    assert fast.keys() == slow.keys()

    def same(a, b):
        if isinstance(a, dict):
            assert a.keys() == b.keys()
            for k in a:
                same(a[k], b[k])
        else:
            assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
            torch.testing.assert_close(a, b)

    same(fast, slow)
    assert fast["row"].tolist() == [107, 112, 149, 100, 112]
