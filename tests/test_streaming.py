"""Streaming input (data/streaming.py, training.streaming.fit_stream): Parquet and WebDataset shards read chunk by
chunk, statistics in one pass, a hash split, training over memory-mapped rows, bad rows located by shard."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from polymodal import MultimodalPredictor
from polymodal.data import streaming as st
from polymodal.data.preprocess import Preprocessor
from polymodal.data.readers import keep_rows, read_table
from polymodal.data.schema import infer_schema
from polymodal.data.shards import ShardReader, read_all
from polymodal.data.stats import TableStats
from polymodal.errors import DataError, PolymodalError

N, SHARDS, TARS = 240, 3, 2
WORDS = {"red": ["ruby", "cherry", "brick", "rose"], "blue": ["ocean", "sky", "navy", "cobalt"]}
FAST = dict(max_epochs=4, batch_size=32, lr=3e-3, patience=4, progress=False, verbose=False,
            encoders={"image": "small-cnn"}, encoder_opts={"image": {"image_size": 32}, "text": {"num_layers": 1}},
            frozen={"image": True})


def make_rows(root: Path) -> pd.DataFrame:
    """N rows over 12 reused PNGs (colour = label), a caption, a number and a category."""
    from conftest import write_image

    (root / "imgs").mkdir(parents=True, exist_ok=True)
    for k in range(12):
        write_image(root / "imgs" / f"{k}.png", ["red", "blue"][k % 2], seed=k)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N):
        k = i % 12
        color = ["red", "blue"][k % 2]
        words = " ".join(rng.choice(WORDS[color] + ["plain", "small"], size=3))
        rows.append({"image": f"imgs/{k}.png", "caption": f"a {words} thing number {i}",
                     "size": float(rng.normal(5, 2)), "shop": "abcd"[int(rng.integers(4))], "label": color})
    return pd.DataFrame(rows)


def write_parquet_shards(df: pd.DataFrame, folder: Path) -> list[Path]:
    paths = []
    for s, part in enumerate(np.array_split(np.arange(len(df)), SHARDS)):
        path = folder / f"part-{s}.parquet"
        # small row groups: a shard's batches then cross row-group ends inside a chunk
        df.iloc[part].to_parquet(path, index=False, row_group_size=25)
        paths.append(path)
    return paths


def write_tar_shards(df: pd.DataFrame, root: Path, folder: Path) -> list[Path]:
    """WebDataset layout: key.png, key.txt, key.json (size, shop), key.cls (the label)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s, part in enumerate(np.array_split(np.arange(len(df)), TARS)):
        path = folder / f"train-{s:03d}.tar"
        with tarfile.open(path, "w") as tf:
            for i in part:
                row = df.iloc[i]
                members = {"png": (root / row["image"]).read_bytes(), "txt": row["caption"].encode(),
                           "json": json.dumps({"size": row["size"], "shop": row["shop"]}).encode(),
                           "cls": row["label"].encode()}
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{i:06d}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    df = make_rows(root)
    shards = write_parquet_shards(df, root)
    df.to_parquet(root / "full.parquet", index=False)
    tars = write_tar_shards(df, root, root / "wds")
    return root, df, shards, tars


def test_reader_yields_every_row_once_in_bounded_chunks(data, tmp_path):
    root, df, shards, tars = data
    reader = ShardReader(str(root / "part-*.parquet"), chunk_rows=30, media=tmp_path / "media")
    assert reader.files == shards
    chunks = list(reader.chunks())
    assert max(len(c) for c in chunks) <= 30
    assert sum(len(c) for c in chunks) == N
    pos = np.concatenate([st.positions(c) for c in chunks])
    np.testing.assert_array_equal(pos, np.arange(N))
    for c in chunks:  # a chunk is one shard's rows, indexed by row number within that shard
        assert c.attrs["source"] in {str(p) for p in shards}
        assert c.index[0] == c.attrs["first_row"] and c.index.max() < 80
    pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), df)
    # the same shards named by a folder, a brace pattern and a list
    assert ShardReader(str(root / "part-{0..2}.parquet")).files == shards
    assert ShardReader([str(p) for p in shards]).files == shards
    tar_chunks = list(ShardReader(str(root / "wds"), chunk_rows=50, media=tmp_path / "media").chunks())
    assert [len(c) for c in tar_chunks] == [50, 50, 20, 50, 50, 20]
    with pytest.raises(DataError, match="no shard matches"):
        ShardReader(str(root / "nothing-*.parquet"))


def test_webdataset_round_trips_to_the_parquet_rows(data, tmp_path):
    root, df, shards, tars = data
    pattern = str(root / "wds" / "train-{000..001}.tar")
    reader = ShardReader(pattern, chunk_rows=64, media=tmp_path / "media",
                            columns={"png": "image", "txt": "caption", "cls": "label"})
    assert reader.files == tars
    got = read_all(reader)
    assert sorted(got.columns) == sorted(df.columns)
    pd.testing.assert_frame_equal(got[["caption", "size", "shop", "label"]], df[["caption", "size", "shop", "label"]])

    def digest(p):
        return hashlib.sha1(Path(p).read_bytes()).hexdigest()

    assert [digest(p) for p in got["image"]] == [digest(root / p) for p in df["image"]]
    # media are extracted once, named by content: 12 distinct images, however many rows use them
    assert len(list((tmp_path / "media").rglob("*.png"))) == 12
    # without a mapping, columns are named by extension and a .cls that is not an int stays text
    plain = next(ShardReader(tars[0], chunk_rows=8, media=tmp_path / "media").chunks())
    assert list(plain.columns) == ["png", "txt", "size", "shop", "cls"]


@pytest.mark.parametrize("label", ["label", "size"])
def test_streaming_statistics_equal_the_in_memory_preprocessor(data, label):
    root, df, shards, _ = data
    full = read_table(root / "full.parquet")
    schema = infer_schema(full, label)
    in_valid = st.valid_mask(np.arange(N), seed=3, fraction=0.25)
    train = full[~in_valid]
    train.attrs.update(full.attrs)
    ref = Preprocessor.fit(train, schema, {})
    acc = TableStats(schema)
    for chunk in ShardReader(str(root / "part-*.parquet"), chunk_rows=17).chunks():
        acc.update(keep_rows(chunk, ~st.valid_mask(st.positions(chunk), seed=3, fraction=0.25)))
    got = Preprocessor.from_stats(acc, {})
    assert acc.rows == len(train)
    assert got.vocab == ref.vocab and got.classes == ref.classes
    assert got.vocab  # the category column is really there
    for col in ref.numeric_mean:
        assert got.numeric_mean[col] == pytest.approx(ref.numeric_mean[col], rel=1e-6, abs=1e-9)
        assert got.numeric_std[col] == pytest.approx(ref.numeric_std[col], rel=1e-6)
    assert got.target_mean == pytest.approx(ref.target_mean, rel=1e-6, abs=1e-9)
    assert got.target_std == pytest.approx(ref.target_std, rel=1e-6)
    assert got.inputs.keys() == ref.inputs.keys()


def test_valid_mask_is_a_stable_seeded_fraction():
    pos = np.arange(20_000)
    m = st.valid_mask(pos, 0, 0.2)
    assert abs(m.mean() - 0.2) < 0.01
    np.testing.assert_array_equal(m[5000:6000], st.valid_mask(pos[5000:6000], 0, 0.2))  # chunking-invariant
    assert (m != st.valid_mask(pos, 1, 0.2)).any()


def test_streaming_fit_matches_in_memory_fit_on_the_same_split(data, tmp_path):
    root, df, shards, _ = data
    streamed = MultimodalPredictor(label="label", path=tmp_path / "stream_run", **FAST)
    streamed.fit(str(root / "part-*.parquet"), stream=True, chunk_rows=50)
    assert streamed.config.stream and (tmp_path / "stream_run" / "model.safetensors").exists()
    assert not list((tmp_path / "stream_run").rglob("*.bin"))  # the memory-mapped row files are removed

    full = read_table(root / "full.parquet")
    in_valid = st.valid_mask(np.arange(N), seed=0, fraction=0.2)
    train, valid = full[~in_valid], full[in_valid]
    train.attrs.update(full.attrs)
    valid.attrs.update(full.attrs)
    memory = MultimodalPredictor(label="label", **FAST).fit(train, valid)

    assert streamed.prep.schema.columns == memory.prep.schema.columns
    assert streamed.prep.vocab == memory.prep.vocab
    # Same rows, same order, same seed and initialisation: the runs agree up to the rounding of the
    # streamed mean/std (merged per chunk) against numpy's over the whole column.
    np.testing.assert_allclose(streamed.predict_proba(full, as_pandas=False),
                               memory.predict_proba(full, as_pandas=False), atol=1e-6)
    for k, v in memory.metrics["valid"].items():
        assert streamed.metrics["valid"][k] == pytest.approx(v, abs=1e-6), k
    assert memory.metrics["valid"]["accuracy"] >= 0.9


def test_streaming_fit_on_webdataset_and_refuses_trained_encoders(data, tmp_path):
    root, df, _, tars = data
    with pytest.raises(PolymodalError, match="streaming needs frozen encoders.*'png'"):
        MultimodalPredictor(label="cls", **{**FAST, "frozen": {}}).fit(str(root / "wds"), stream=True)
    p = MultimodalPredictor(label="cls", **FAST).fit(str(root / "wds" / "*.tar"), stream=True, chunk_rows=64)
    assert p.prep.schema.columns["png"] == "image" and p.prep.schema.columns["txt"] == "text"
    assert p.metrics["valid"]["accuracy"] >= 0.9


def test_bad_row_in_a_shard_names_file_row_and_column(data, tmp_path):
    root, df, _, _ = data
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "imgs").symlink_to(root / "imgs")
    broken = df.copy()
    broken.loc[80 + 7, "image"] = "imgs/missing.png"  # shard 2 (part-1), row 7 within it
    write_parquet_shards(broken, bad)
    with pytest.raises(DataError) as err:
        MultimodalPredictor(label="label", **FAST).fit(str(bad / "part-*.parquet"), stream=True, chunk_rows=32)
    assert err.value.file.endswith("part-1.parquet") and err.value.row == 7 and err.value.column == "image"
    p = MultimodalPredictor(label="label", path=tmp_path / "run", **{**FAST, "max_epochs": 1},
                            on_bad_rows="skip", column_types={"caption": "id"})
    p.fit(str(bad / "part-*.parquet"), stream=True, chunk_rows=32)
    rows = pd.read_csv(tmp_path / "run" / "bad_rows.csv")
    assert len(rows) == 1 and rows["file"][0].endswith("part-1.parquet") and rows["row"][0] == 7
    assert rows["column"][0] == "image" and "missing.png" in rows["message"][0]


def test_cli_stream_refuses_a_trained_encoder(data, tmp_path):
    from typer.testing import CliRunner

    from polymodal.cli import app

    root, *_ = data
    res = CliRunner().invoke(app, ["fit", str(root / "part-*.parquet"), "--stream", "--chunk-rows", "50",
                                   "--label", "label", "--image-encoder", "small-cnn", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2
    assert "streaming needs frozen encoders" in res.output and "'image'" in res.output


def test_cli_stream_fit_writes_a_run_folder(data, tmp_path):
    from typer.testing import CliRunner

    from polymodal.cli import app

    root, *_ = data
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["fit", str(root / "part-{0..2}.parquet"), "--stream", "--chunk-rows", "50",
                                   "--label", "label", "--column-types", "image=id,caption=id", "--epochs", "1",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    config = json.loads((out / "config.json").read_text())
    assert config["fit"]["stream"] is True and config["fit"]["chunk_rows"] == 50
    assert MultimodalPredictor.load(out).predict(read_table(root / "full.parquet")).shape == (N,)


def test_row_store_reads_back_chunks_memory_mapped(tmp_path):
    from polymodal.data.preprocess import InputSpec
    from polymodal.data.schema import Schema

    prep = Preprocessor(Schema({"x": "numeric"}, "y", "regression"),
                        {"tabular": InputSpec("tabular", "tabular", ["x"])})
    store = st.RowStore(tmp_path / "rows")
    rng = np.random.default_rng(0)
    chunks = [{"rows": np.arange(a, b), "feat:img": rng.normal(size=(b - a, 4)).astype(np.float32),
               "present:img": np.ones(b - a, bool), "target": rng.normal(size=b - a).astype(np.float32)}
              for a, b in ((0, 5), (5, 12))]
    for c in chunks:
        store.append(c)
    ds = store.dataset(prep, "shards")
    assert isinstance(ds.features["img"][0], np.memmap) and len(ds) == 12
    batch = ds.__getitems__([11, 0, 7])
    ds.release()  # pages dropped from this process; the data is still there
    again = ds.__getitems__([11, 0, 7])
    feats = np.concatenate([c["feat:img"] for c in chunks])
    np.testing.assert_array_equal(batch["features"]["img"].numpy(), feats[[11, 0, 7]])
    np.testing.assert_array_equal(again["features"]["img"].numpy(), feats[[11, 0, 7]])
    assert batch["row"].tolist() == [11, 0, 7]
    with pytest.raises(PolymodalError, match="changed"):
        store.append({**chunks[0], "feat:img": np.zeros((5, 3), np.float32)})


def test_streaming_with_validation_shards(data):
    root, df, shards, _ = data
    p = MultimodalPredictor(label="label", **{**FAST, "max_epochs": 1}, column_types={"caption": "id"})
    p.fit([str(s) for s in shards[:2]], str(shards[2]), stream=True, chunk_rows=64)
    assert len(p._result.val_target) == 80  # every row of the third shard, none of the first two
    train = df.iloc[:160]
    assert p.prep.numeric_mean["size"] == pytest.approx(train["size"].mean(), rel=1e-9)
