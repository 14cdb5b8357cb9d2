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


def _batches(order, b):
    return [order[i:i + b] for i in range(0, len(order), b)]


def test_length_bucketing_permutes_and_cuts_padding():
    from polymodal.training.callbacks import bucket_by_length

    rng = np.random.default_rng(0)
    n, b = 1003, 16
    lengths = rng.integers(3, 120, size=n)
    order = rng.permutation(n).tolist()
    out = bucket_by_length(order, lengths, b, torch.Generator().manual_seed(0))
    assert sorted(out) == list(range(n))  # every row once
    batches = _batches(out, b)
    assert all(len(x) == b for x in batches[:-1]) and len(batches[-1]) == n % b  # the short batch is last
    assert lengths[batches[0]].max() == lengths.max()  # the longest batch first (out-of-memory shows early)

    def padded(o):  # tokens computed when every batch is padded to its longest row
        return sum(len(x) * int(lengths[x].max()) for x in _batches(o, b))

    assert padded(out) < 0.7 * padded(order)  # against the plain shuffle
    assert padded(out) >= lengths.sum()


def test_bucketed_sampler_is_seeded_and_shards_like_one_process(monkeypatch):
    from polymodal.training.callbacks import EpochSampler

    n, b = 203, 8
    lengths = np.random.default_rng(1).integers(1, 60, size=n)
    one = EpochSampler(n, seed=3, lengths=lengths, batch_size=2 * b)  # one process, global batch 2b
    one.set_epoch(2)
    single = [i - 2 * n for i in one]
    assert sorted(single) == list(range(n))
    one.set_epoch(3)
    assert [i - 3 * n for i in one] != single  # a new order every epoch
    ranks = []
    for r in range(2):
        s = EpochSampler(n, seed=3, lengths=lengths, batch_size=b, distributed=True)
        monkeypatch.setattr(s, "_shard", lambda r=r: (r, 2))
        s.set_epoch(2)
        ranks.append([i - 2 * n for i in s])
    # rank batches k of b rows together are the single process's k-th batch of 2b rows (up to the wrap padding)
    for k, glob in enumerate(_batches(single, 2 * b)[:-1]):
        assert sorted(ranks[0][k * b:(k + 1) * b] + ranks[1][k * b:(k + 1) * b]) == sorted(glob)


def test_loader_buckets_trained_text_only_when_asked():
    from polymodal.encoders import build_encoder
    from polymodal.training.config import FitConfig
    from polymodal.training.pipeline import make_loader

    rng = np.random.default_rng(0)
    n = 320
    words = ["word"] * 80
    df = pd.DataFrame({"q": [" ".join(words[:k]) for k in rng.integers(1, 60, size=n)],
                       "y": rng.choice(["p", "q"], n)})
    schema = infer_schema(df, "y", {"q": "text"}, "binary")
    prep = Preprocessor.fit(df, schema, {"text": build_encoder("text", None, num_layers=1).preprocess_config()})
    assert TableDataset(df, prep, None, train=True).text_lengths() is not None

    def padding(bucketing: bool) -> float:
        cfg = FitConfig(label="y", batch_size=16, length_bucketing=bucketing)
        loader = make_loader(df, prep, {}, cfg, train=True)
        pad = total = 0
        for batch in loader:
            mask = batch["inputs"]["q"]["attention_mask"]
            pad, total = pad + int((mask == 0).sum()), total + mask.numel()
        return pad / total

    assert padding(True) < 0.5 * padding(False)
    # validation/prediction loaders keep the table's order
    rows = [r for batch in make_loader(df, prep, {}, FitConfig(label="y", batch_size=16), train=False)
            for r in batch["row"].tolist()]
    assert rows == list(df.index)


def test_group_together_keeps_groups_contiguous_and_random():
    from polymodal.training.callbacks import group_together

    rng = np.random.default_rng(0)
    groups = rng.integers(0, 40, size=357)
    order = rng.permutation(len(groups)).tolist()
    out = group_together(order, groups, torch.Generator().manual_seed(0))
    assert sorted(out) == list(range(len(groups)))  # every row once
    runs = [g for k, g in enumerate(groups[out]) if k == 0 or g != groups[out][k - 1]]
    assert len(runs) == len(set(groups.tolist()))  # each group is one contiguous run
    # within a group, the rows keep their order in the shuffled input
    pos = {r: k for k, r in enumerate(order)}
    for g in set(groups.tolist()):
        mine = [r for r in out if groups[r] == g]
        assert mine == sorted(mine, key=pos.get)
    other = group_together(order, groups, torch.Generator().manual_seed(1))
    assert [groups[r] for r in other] != [groups[r] for r in out]  # the group order is drawn from the generator


def test_grouped_sampler_batches_hold_few_groups_and_reseed_per_epoch():
    from polymodal.training.callbacks import EpochSampler

    groups = np.repeat([f"img{i}" for i in range(50)], 9)  # 50 images, 9 questions each
    n, b = len(groups), 64
    s = EpochSampler(n, seed=0, groups=groups, batch_size=b)
    s.set_epoch(1)
    first = [i - n for i in s]
    assert sorted(first) == list(range(n))
    distinct = [len(set(groups[x])) for x in _batches(first, b)]
    assert max(distinct) <= -(-b // 9) + 1  # a 64-row batch spans at most 9 images (8 whole, 2 cut)
    plain = EpochSampler(n, seed=0, batch_size=b)
    plain.set_epoch(1)
    assert np.mean([len(set(groups[x])) for x in _batches([i - n for i in plain], b)]) > 25
    s.set_epoch(2)
    assert [i - 2 * n for i in s] != first  # a new order every epoch, the same for the same (seed, epoch)
    s.set_epoch(1)
    assert [i - n for i in s] == first


def test_loader_groups_batches_only_when_asked():
    from polymodal.training.config import FitConfig
    from polymodal.training.pipeline import make_loader

    rng = np.random.default_rng(0)
    n = 240
    df = pd.DataFrame({"img": [f"{i % 20}.png" for i in range(n)], "x": rng.normal(size=n),
                       "y": rng.choice(["p", "q"], n)})
    schema = infer_schema(df, "y", {"img": "image"}, "binary")
    prep = Preprocessor.fit(df, schema, {"image": {"image_size": 8, "mean": [0.5] * 3, "std": [0.5] * 3}})
    feats = {"img": (rng.normal(size=(n, 4)).astype(np.float32), np.ones(n, bool))}

    def images_per_batch(grouped: bool) -> float:
        cfg = FitConfig(label="y", batch_size=24, group_batches=grouped)
        loader = make_loader(df, prep, feats, cfg, train=True)
        return float(np.mean([df.loc[batch["row"].numpy(), "img"].nunique() for batch in loader]))

    assert images_per_batch(True) <= 3.0  # 12 rows per image: two whole images, or parts of three
    assert images_per_batch(False) > 10


def test_fit_says_when_group_batches_has_nothing_to_group(tmp_path, capsys):
    from polymodal.predictor import MultimodalPredictor

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"x": rng.normal(size=60), "y": rng.choice(["p", "q"], 60)})
    MultimodalPredictor(label="y", path=tmp_path / "run", max_epochs=1, group_batches=True, progress=False).fit(df)
    assert "--group-batches: no groups to keep together" in capsys.readouterr().out
