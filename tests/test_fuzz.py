"""Fuzz tests (Hypothesis) for bad input: random tables, corrupt media, odd formats.

Properties: the only exceptions are `DataError`/`PolymodalError` with a message naming the file (and row and
column where a table is involved); `read_table` returns exactly the rows written; the CLI exits 0/1/2 and never
prints a traceback. docs/reliability.md lists what is covered and what is not.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
import warnings
from pathlib import Path

import lightning.pytorch  # noqa: F401 - see below
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from hypothesis import HealthCheck, Phase, assume, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from polymodal.cli import app
from polymodal.data.audio import load_wave
from polymodal.data.dataset import check_rows
from polymodal.data.preprocess import Preprocessor
from polymodal.data.readers import read_table
from polymodal.data.schema import infer_column_type, infer_problem_type, infer_schema
from polymodal.data.transforms import load_audio_features, load_image
from polymodal.errors import DataError, PolymodalError
from polymodal.problem_types import PROBLEM_TYPES
from polymodal.types import MODALITIES

# POLYMODAL_FUZZ_SCALE=10 runs ten times the examples, freshly random each run (default: fixed seed, CI-sized)
SCALE = float(os.environ.get("POLYMODAL_FUZZ_SCALE", "1"))
FUZZ = settings(deadline=None, derandomize=SCALE == 1, print_blob=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example])


def fuzz(n: int) -> settings:
    """Fuzz settings with n examples: no per-example deadline (media decoding varies), fixed seed for CI."""
    return settings(FUZZ, max_examples=max(1, int(n * SCALE)))
AUDIO_CFG = {"sample_rate": 16000, "n_mels": 32, "n_fft": 400, "hop_length": 160, "max_seconds": 0.5}
MEAN, STD = [0.5] * 3, [0.5] * 3

# ---- cell and table strategies -------------------------------------------------------------------------------
SPECIAL = ["", " ", "NA", "nan", "None", "null", "N/A", "1e5", "001", "-0", "inf", "1,5", "0x1F", "True",
           '"', '""', "'", ",", "\t", "\n", "\r\n", "\r", "\x00", "a\x00b", "\u2028", "\u2029", "\x85",
           "\u202eRTL override", "مرحبا بالعالم", "שלום", "😀👍🏽", "名前", "\ufeffbom", "a|b", "x.png",
           "y.wav", "../../etc/passwd", "x" * 200_000, "word " * 2_000]
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)
CELL = st.one_of(st.none(), st.sampled_from(SPECIAL), TEXT,
                 st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2 ** 70), 2 ** 70),
                 st.booleans())
NAMES = ["a", "a", "b", "label", "", " ", "1", "Unnamed: 0", "date", "created_at", "timestamp", "名前", "é",
         "x,y", 'q"uote', "new\nline", "\x00", "😀"]


@st.composite
def frames(draw, max_rows: int = 8, unique_names: bool = False) -> pd.DataFrame:
    """A DataFrame of 1..max_rows rows and 1..4 columns of mixed, hostile cells (duplicate names unless asked)."""
    n = draw(st.integers(1, max_rows))
    k = draw(st.integers(1, 4))
    name = st.one_of(st.sampled_from(NAMES), TEXT)
    names = draw(st.lists(name, min_size=k, max_size=k, unique=unique_names))
    # a column is either one kind of cell throughout (the common case) or anything mixed
    cols = []
    for _ in range(k):
        kind = draw(st.sampled_from([CELL, TEXT, st.floats(allow_nan=True), st.integers(-5, 5)]))
        cols.append(draw(st.lists(st.one_of(st.none(), kind), min_size=n, max_size=n)))
    df = pd.DataFrame(dict(enumerate(cols)))
    df.columns = names
    return df


def _json_cell(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN/inf
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 2 ** 63:
        return str(v)  # beyond what any JSON reader keeps as an integer
    return v


def write_table(df: pd.DataFrame, path: Path, ensure_ascii: bool = True) -> None:
    """Write df in the format of path's suffix, as a user's tool would (pandas for CSV/TSV/Parquet, json for JSONL)."""
    fmt = path.suffix
    if fmt == ".csv":
        df.to_csv(path, index=False)
    elif fmt == ".tsv":
        df.to_csv(path, index=False, sep="\t")
    elif fmt == ".jsonl":
        keys = list(dict.fromkeys(df.columns))  # JSON objects cannot repeat a key
        with open(path, "w", encoding="utf-8") as f:
            for row in df.itertuples(index=False):
                rec = {}
                for key, v in zip(df.columns, row):
                    rec.setdefault(key, _json_cell(v))
                f.write(json.dumps({k: rec[k] for k in keys}, ensure_ascii=ensure_ascii, allow_nan=False) + "\n")
    else:
        # Parquet needs one type per column: mixed columns become strings, as a user's export would make them
        out = pd.DataFrame({i: _one_type(df.iloc[:, i]) for i in range(df.shape[1])})
        out.columns = list(df.columns)
        out.to_parquet(path)


def _one_type(s: pd.Series) -> pd.Series:
    kinds = {type(v) for v in s if v is not None and not (isinstance(v, float) and math.isnan(v))}
    if len(kinds) <= 1 and not any(isinstance(v, int) and abs(v) >= 2 ** 63 for v in s):
        return s
    return s.map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))


def assert_clear(exc: Exception, *where: str) -> None:
    """A user-facing error: our type, and naming every given location (file path, row, column)."""
    assert isinstance(exc, PolymodalError), f"bare {type(exc).__name__}: {exc}"
    for w in where:
        assert w in str(exc), (w, str(exc))


def _gist(exc: Exception, path: Path) -> str:
    """The error's first words, without the path, to label Hypothesis statistics (--hypothesis-show-statistics)."""
    return str(exc).replace(f"file {path}: ", "").replace(str(path), "<file>")[:40]


# One corruption: truncate at a fraction of the length, set the byte at a fraction of the length (anywhere, or in
# the first 64 bytes where the headers are), or append junk.
MUTATION = st.one_of(st.tuples(st.just("cut"), st.floats(0, 1)),
                     st.tuples(st.just("set"), st.floats(0, 1), st.integers(0, 255)),
                     st.tuples(st.just("head"), st.integers(0, 63), st.integers(0, 255)),
                     st.tuples(st.just("junk"), st.binary(min_size=1, max_size=64)))


def _mutate(data: bytes, ops: list[tuple]) -> bytes:
    b = bytearray(data)
    for op, *args in ops:
        if op == "cut":
            del b[int(len(b) * args[0]):]
        elif op == "junk":
            b += args[0]
        elif b:
            pos = int(args[0] * (len(b) - 1)) if op == "set" else min(args[0], len(b) - 1)
            b[pos] = args[1]
    return bytes(b)


# ---- readers ---------------------------------------------------------------------------------------------------
@fuzz(300)
@given(df=frames(), fmt=st.sampled_from([".csv", ".tsv", ".jsonl", ".parquet"]), ensure_ascii=st.booleans())
def test_read_table_returns_exactly_the_rows_written(df, fmt, ensure_ascii):
    if fmt == ".parquet":
        df = df.loc[:, ~df.columns.duplicated()]  # pyarrow refuses to write repeated names
    last = df.iloc[-1, 0]
    # One ambiguity no reader can resolve: to_csv writes a last cell of only CRs unquoted, one column wide, so
    # the file ends in "\r\n", exactly as a file with a trailing blank line does.
    assume(not (fmt in (".csv", ".tsv") and df.shape[1] == 1 and isinstance(last, str) and last
                and not last.strip("\r")))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"t{fmt}"
        write_table(df, path, ensure_ascii)
        named = [str(c) for c in df.columns if str(c).strip()]
        if fmt in (".csv", ".tsv") and len(set(named)) < len(named):
            # read_csv would rename the repeat "a" to "a.1" and use it as another column: refused, named
            with pytest.raises(DataError, match="duplicate column names"):
                read_table(path)
            return
        out = read_table(path)  # a valid file must read: no DataError allowed here
        assert len(out) == len(df)
        expected_cols = len(dict.fromkeys(df.columns)) if fmt == ".jsonl" else df.shape[1]
        assert out.shape[1] == expected_cols
        assert out.columns.is_unique and all(isinstance(c, str) for c in out.columns)
        assert out.attrs["source"] == str(path)


@fuzz(300)
@given(df=frames(max_rows=5, unique_names=True), fmt=st.sampled_from([".csv", ".tsv", ".jsonl", ".parquet"]),
       ops=st.lists(MUTATION, min_size=1, max_size=3))
def test_read_table_corrupt_files_fail_clearly(df, fmt, ops):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"t{fmt}"
        write_table(df, path)
        path.write_bytes(_mutate(path.read_bytes(), ops))
        try:
            out = read_table(path)
        except Exception as exc:  # noqa: BLE001 - the property is about which exceptions escape
            assert_clear(exc, str(path))
            event(f"clear error: {_gist(exc, path)}")
        else:
            assert len(out) >= 1 and out.columns.is_unique
            event("read")


@pytest.mark.parametrize("content, fmt", [(b"", ".csv"), (b"\x00\x00\x00", ".csv"), (b"\xff\xfe\x00a", ".tsv"),
                                          (b"a,b\n1,2,3,4\n", ".csv"), (b"[1, 2]\n", ".jsonl"), (b"", ".parquet"),
                                          (b"PAR1garbagePAR1", ".parquet"), (b'"unclosed\n1', ".csv")])
def test_read_table_malformed_bytes(tmp_path, content, fmt):
    path = tmp_path / f"bad{fmt}"
    path.write_bytes(content)
    try:
        out = read_table(path)
    except Exception as exc:  # noqa: BLE001
        assert_clear(exc, str(path))
    else:
        assert len(out) >= 1


def test_read_table_directory_and_duplicates(tmp_path):
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(DataError) as e:
        read_table(tmp_path / "dir.csv")
    assert str(tmp_path / "dir.csv") in str(e.value)
    from polymodal.data.readers import as_table

    dup = pd.DataFrame([[1, 2, "x"]], columns=[1, "1", "label"])  # distinct until names become strings
    with pytest.raises(DataError, match="duplicate column name"):
        as_table(dup)
    with pytest.raises(DataError, match="duplicate column name"):
        infer_schema(dup.set_axis(["a", "a", "label"], axis=1), "label")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table([pa.array([1, 2]), pa.array([3, 4])], names=["a", "a"]), tmp_path / "dup.parquet")
    with pytest.raises(DataError) as e:  # pyarrow can write repeated names; reading them back must not crash
        read_table(tmp_path / "dup.parquet")
    assert str(tmp_path / "dup.parquet") in str(e.value)


def test_csv_carriage_return_inside_cells_keeps_rows(tmp_path):
    # pandas' to_csv leaves a bare CR in a cell unquoted; read_csv used to split the row there (3 rows → 6)
    df = pd.DataFrame({"note": ["line one\rline two", "x", "a\rb\rc"], "label": ["p", "q", "p"]})
    for sep, ext in ((",", "csv"), ("\t", "tsv")):
        df.to_csv(tmp_path / f"cr.{ext}", index=False, sep=sep)
        out = read_table(tmp_path / f"cr.{ext}")
        assert out.to_dict("list") == df.to_dict("list")
    (tmp_path / "crlf.csv").write_bytes(b"a,b\r\n1,x\ry\r\n2,z\r\n")  # CRLF lines plus a CR in a cell
    assert read_table(tmp_path / "crlf.csv").to_dict("list") == {"a": [1, 2], "b": ["x\ry", "z"]}
    (tmp_path / "mac.csv").write_bytes(b"a,b\r1,x\r2,z\r")  # classic Mac line ends still read as lines
    assert read_table(tmp_path / "mac.csv").to_dict("list") == {"a": [1, 2], "b": ["x", "z"]}


def test_one_column_csv_keeps_blank_cells(tmp_path):
    # to_csv writes a space or tab cell unquoted; in a one-column file read_csv skipped that line as blank
    df = pd.DataFrame({"path": ["a.png", " ", "b.png", "\t", "c.png"]})
    df.to_csv(tmp_path / "one.csv", index=False)
    assert read_table(tmp_path / "one.csv")["path"].tolist() == df["path"].tolist()
    (tmp_path / "blank.csv").write_text("path\na.png\n\nb.png\n\n\n")  # a blank middle line is a missing cell
    out = read_table(tmp_path / "blank.csv")["path"].tolist()  # trailing empty lines are not rows
    assert out[0] == "a.png" and pd.isna(out[1]) and out[2:] == ["b.png"]


# ---- schema inference ----------------------------------------------------------------------------------------
@fuzz(300)
@given(df=frames(max_rows=30), label_at=st.integers(0, 3))
def test_schema_inference_never_crashes(df, label_at):
    label = df.columns[label_at % df.shape[1]]
    for i in range(df.shape[1]):
        try:
            modality, reason = infer_column_type(df.iloc[:, i], ".")
        except Exception as exc:  # noqa: BLE001
            raise AssertionError(f"infer_column_type raised {type(exc).__name__}: {exc}") from exc
        assert modality in MODALITIES and reason
    try:
        assert infer_problem_type(df.iloc[:, label_at % df.shape[1]], column=str(label)) in PROBLEM_TYPES
    except Exception as exc:  # noqa: BLE001
        assert_clear(exc, str(label))
    try:
        schema = infer_schema(df, label)
    except Exception as exc:  # noqa: BLE001
        assert_clear(exc)
    else:
        assert set(schema.columns) == set(df.columns) - {label}
        assert all(m in MODALITIES for m in schema.columns.values())


@pytest.mark.parametrize("values", [[[1, 2], [3], None] * 3, [{"a": 1}, {"b": 2}, None] * 3,
                                    [b"x", bytearray(b"y"), 1.5] * 3, [{1, 2}, {3}] * 3])
def test_schema_nested_cells(values):
    modality, reason = infer_column_type(pd.Series(values), ".")
    assert modality in MODALITIES and reason
    try:
        infer_problem_type(pd.Series(values), column="y")
    except Exception as exc:  # noqa: BLE001
        assert_clear(exc, "'y'")


# ---- media decoders ------------------------------------------------------------------------------------------
IMAGE_KINDS = [("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "L"), ("PNG", "LA"), ("PNG", "P"),
               ("PNG", "1"), ("PNG", "I;16"), ("TIFF", "I"), ("JPEG", "RGB"), ("JPEG", "L"), ("JPEG", "CMYK"),
               ("TIFF", "F"), ("GIF", "P"), ("BMP", "RGB"), ("WEBP", "RGBA")]
SIZES = st.one_of(st.tuples(st.integers(1, 40), st.integers(1, 40)),
                  st.sampled_from([(1, 1), (1, 2000), (2000, 1), (3, 900)]))


def image_bytes(fmt: str, mode: str, size: tuple[int, int], seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    w, h = size
    if mode in ("I;16", "I", "F"):
        arr = rng.integers(0, 65535, (h, w)).astype({"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode])
        im = Image.fromarray(arr)  # uint16 → I;16, int32 → I, float32 → F
    else:
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
    extra = {"transparency": 0} if mode == "P" and fmt == "PNG" else {}
    buf = io.BytesIO()
    im.save(buf, format=fmt, **extra)
    return buf.getvalue()


def _check_image(path: Path, augment: bool) -> None:
    try:
        arr = load_image(str(path), 16, MEAN, STD, augment=augment, rng=np.random.default_rng(0))
    except Exception as exc:  # noqa: BLE001
        assert_clear(exc, str(path))
        event(f"clear error: {_gist(exc, path)}")
    else:
        assert arr.shape == (3, 16, 16) and arr.dtype == np.float32 and np.isfinite(arr).all()
        event("decoded")


@fuzz(100)
@given(kind=st.sampled_from(IMAGE_KINDS), size=SIZES, seed=st.integers(0, 99), augment=st.booleans())
def test_valid_images_of_every_mode_load(kind, size, seed, augment):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"x.{kind[0].lower()}"
        path.write_bytes(image_bytes(*kind, size, seed))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns about palette transparency; not our concern
            arr = load_image(str(path), 16, MEAN, STD, augment=augment, rng=np.random.default_rng(seed))
        assert arr.shape == (3, 16, 16) and np.isfinite(arr).all()


@fuzz(500)
@given(kind=st.sampled_from([k for k in IMAGE_KINDS if k[0] in ("PNG", "JPEG")]), size=SIZES,
       ops=st.lists(MUTATION, min_size=1, max_size=4), augment=st.booleans())
def test_corrupt_images_fail_clearly(kind, size, ops, augment):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"x.{kind[0].lower()}"
        path.write_bytes(_mutate(image_bytes(*kind, size, 0), ops))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _check_image(path, augment)


WAV_SUBTYPES = ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"]


def wav_bytes(subtype: str, channels: int, sr: int, frames: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    sf.write(buf, (0.5 * rng.uniform(-1, 1, (frames, channels))).astype(np.float32), sr, subtype=subtype,
             format="WAV")
    return buf.getvalue()


def _check_audio(path: Path) -> None:
    try:
        wave = load_wave(str(path), 16000, max_seconds=0.5)
        mel = load_audio_features(str(path), AUDIO_CFG)
    except Exception as exc:  # noqa: BLE001
        assert_clear(exc, str(path))
        event(f"clear error: {_gist(exc, path)}")
    else:
        event("decoded")
        assert wave.shape == (8000,) and wave.dtype == np.float32 and np.isfinite(wave).all()
        assert mel.shape[0] == AUDIO_CFG["n_mels"] and np.isfinite(mel).all()


FRAMES = st.one_of(st.sampled_from([0, 1, 2, 10, 399]), st.integers(0, 6000))


@fuzz(120)
@given(subtype=st.sampled_from(WAV_SUBTYPES), channels=st.sampled_from([1, 2, 6]),
       sr=st.sampled_from([8000, 11025, 16000, 44100, 48000]), frames=FRAMES, seed=st.integers(0, 99))
def test_valid_wavs_load_or_report_no_samples(subtype, channels, sr, frames, seed):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.wav"
        path.write_bytes(wav_bytes(subtype, channels, sr, frames, seed))
        if frames == 0:
            with pytest.raises(DataError, match="no samples") as e:
                load_wave(str(path), 16000)
            assert str(path) in str(e.value)
        else:
            wave = load_wave(str(path), 16000, max_seconds=0.5)
            assert wave.shape == (8000,) and np.isfinite(wave).all()
            assert load_audio_features(str(path), AUDIO_CFG).shape[0] == AUDIO_CFG["n_mels"]


@fuzz(400)
@given(subtype=st.sampled_from(WAV_SUBTYPES), channels=st.sampled_from([1, 2]), frames=FRAMES,
       ops=st.lists(MUTATION, min_size=1, max_size=4))
def test_corrupt_wavs_fail_clearly(subtype, channels, frames, ops):
    # "head" ops hit the RIFF header: chunk sizes, channels, sample rate, bit depth
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.wav"
        path.write_bytes(_mutate(wav_bytes(subtype, channels, 8000, frames, 0), ops))
        _check_audio(path)


def test_float_wav_with_nan_samples_is_an_error(tmp_path):
    path = tmp_path / "nan.wav"
    wave = np.zeros(800, np.float32)
    wave[10] = np.nan
    sf.write(path, wave, 8000, subtype="FLOAT")
    with pytest.raises(DataError, match="not finite") as e:
        load_wave(str(path), 16000)
    assert str(path) in str(e.value)


def test_float_wav_with_huge_samples_gives_the_unit_peak_features(tmp_path):
    # a corrupt float WAV can hold samples near 3e38, whose float32 power overflows; log-mel is gain-invariant
    wave = np.sin(np.linspace(0, 300, 8000)).astype(np.float32)
    sf.write(tmp_path / "unit.wav", wave, 16000, subtype="FLOAT")
    sf.write(tmp_path / "huge.wav", wave * np.float32(1e37), 16000, subtype="FLOAT")
    huge = load_audio_features(str(tmp_path / "huge.wav"), AUDIO_CFG)
    np.testing.assert_allclose(huge, load_audio_features(str(tmp_path / "unit.wav"), AUDIO_CFG), atol=1e-4)


@pytest.mark.parametrize("rate", [0, 1, 3, 10 ** 6, 2 ** 32 - 1])
def test_wav_header_sample_rate(tmp_path, rate):
    """A corrupt rate field: 0 is a clear error; 1 Hz (3 s of samples = 13 hours) must not take minutes."""
    import struct
    import time

    data = bytearray(wav_bytes("PCM_16", 1, 16000, 48000, 0))
    data[24:28] = struct.pack("<I", rate)
    path = tmp_path / "rate.wav"
    path.write_bytes(bytes(data))
    t0 = time.perf_counter()
    if rate == 0:
        with pytest.raises(DataError, match="sample rate") as e:
            load_wave(str(path), 16000, max_seconds=4.0)
        assert str(path) in str(e.value)
    else:
        mel = load_audio_features(str(path), {**AUDIO_CFG, "max_seconds": 4.0})
        assert mel.shape == (AUDIO_CFG["n_mels"], 401) and np.isfinite(mel).all()
    assert time.perf_counter() - t0 < 5.0


@pytest.mark.parametrize("what", ["zero-byte", "directory", "missing", "text"])
@pytest.mark.parametrize("ext", ["png", "jpg", "wav"])
def test_not_a_media_file(tmp_path, what, ext):
    path = tmp_path / f"thing.{ext}"
    if what == "zero-byte":
        path.write_bytes(b"")
    elif what == "directory":
        path.mkdir()
    elif what == "text":
        path.write_text("hello, I am not media\n")
    loaders = [lambda: load_wave(str(path), 16000), lambda: load_audio_features(str(path), AUDIO_CFG)] \
        if ext == "wav" else [lambda: load_image(str(path), 16, MEAN, STD)]
    for load in loaders:
        with pytest.raises(DataError) as e:
            load()
        assert str(path) in str(e.value)


# ---- check_rows over a table of fuzzed media ---------------------------------------------------------------------
@fuzz(40)
@given(images=st.lists(st.tuples(st.sampled_from(["ok", "cut", "flip", "empty", "dir", "missing", "none"]),
                                 st.floats(0, 1)), min_size=4, max_size=8),
       audio=st.lists(st.tuples(st.sampled_from(["ok", "cut", "flip", "empty", "dir", "missing", "none",
                                                 "silent"]), st.floats(0, 1)), min_size=4, max_size=8))
def test_check_rows_reports_bad_media_by_row(images, audio):
    n = min(len(images), len(audio))
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        rows = []
        for i in range(n):
            img = _media_file(d, f"i{i}.png", images[i], image_bytes("PNG", "RGB", (8, 8), i))
            wav = _media_file(d, f"a{i}.wav", audio[i], wav_bytes("PCM_16", 1, 8000, 0 if audio[i][0] == "silent"
                                                                  else 400, i))
            rows.append({"img": img, "clip": wav, "label": ["p", "q"][i % 2]})
        df = pd.DataFrame(rows + [{"img": "i_ok.png", "clip": "a_ok.wav", "label": "p"}] * 2)
        (d / "i_ok.png").write_bytes(image_bytes("PNG", "RGB", (8, 8), 0))
        (d / "a_ok.wav").write_bytes(wav_bytes("PCM_16", 1, 8000, 400, 0))
        df.attrs.update(base_dir=str(d), source=str(d / "t.csv"))
        schema = infer_schema(df, "label", column_types={"img": "image", "clip": "audio"})
        prep = Preprocessor.fit(df, schema, {"image": {"image_size": 16, "mean": MEAN, "std": STD},
                                             "audio": AUDIO_CFG})
        problems = check_rows(df, prep)
        flagged = {(p.row, p.column) for p in problems}
        for i in range(n):
            for col, (state, _) in (("img", images[i]), ("clip", audio[i])):
                if state in ("empty", "dir", "missing") or (col == "clip" and state == "silent"):
                    assert (i, col) in flagged, (i, col, state, problems)
                if state in ("ok", "none"):
                    assert (i, col) not in flagged
        for p in problems:
            assert 0 <= p.row < len(df) and p.column in ("img", "clip")
            assert str(d) in p.message  # names the file


def _media_file(d: Path, name: str, spec: tuple[str, float], valid: bytes) -> str | None:
    state, frac = spec
    path = d / name
    if state == "none":
        return None
    if state == "missing":
        return name
    if state == "dir":
        path.mkdir()
    elif state == "empty":
        path.write_bytes(b"")
    elif state == "cut":
        path.write_bytes(valid[: int(len(valid) * frac)])
    elif state == "flip":
        path.write_bytes(_mutate(valid, [("set", frac, 0xFF), ("set", 1 - frac, 0x00)]))
    else:
        path.write_bytes(valid)
    return name


# ---- the CLI end to end --------------------------------------------------------------------------------------------
# Lightning is imported at the top of this module on purpose: it gives its logger a StreamHandler on whatever
# sys.stderr is at import time. Imported inside a CliRunner call, that is the runner's stream, closed after the
# call, and the next fit in this process prints "--- Logging error --- Traceback" (a test-harness artefact; a
# real `polymodal` process has one stderr).
runner = CliRunner()


# no shrink phase: shrinking means hundreds of whole fits
@settings(FUZZ, max_examples=max(1, int(12 * SCALE)), phases=[Phase.explicit, Phase.generate])
@given(extra=st.lists(st.sampled_from(SPECIAL[:30]) | st.floats(allow_nan=True) | st.none(), min_size=12,
                      max_size=12),
       labels=st.lists(st.sampled_from(["a", "b", "NA", "", "😀", None, "1"]), min_size=12, max_size=12),
       media=st.lists(st.sampled_from(["ok", "ok", "ok", "cut", "empty", "missing", "none"]), min_size=12,
                      max_size=12),
       fmt=st.sampled_from([".csv", ".jsonl", ".parquet"]), skip=st.booleans())
def test_cli_validate_and_fit_exit_cleanly(extra, labels, media, fmt, skip):
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        valid = image_bytes("PNG", "RGB", (8, 8), 0)
        img = [_media_file(d, f"{i}.png", (m, 0.5), valid) for i, m in enumerate(media)]
        df = pd.DataFrame({"img": img, "extra": extra, "label": labels})
        table = d / f"t{fmt}"
        write_table(df, table)
        for args in (["validate", str(table), "--label", "label"],
                     ["fit", str(table), "--label", "label", "--out", str(d / "run"), "--image-encoder",
                      "small-cnn", "--image-size", "16", "--epochs", "1", "--batch-size", "8",
                      "--on-bad-rows", "skip" if skip else "error", "--column-types", "img=image"]):
            r = runner.invoke(app, args)
            assert r.exit_code in (0, 1, 2), (args[0], r.exit_code, r.output)
            assert r.exception is None or isinstance(r.exception, SystemExit), \
                (args[0], repr(r.exception), r.output)
            assert "Traceback" not in r.output, (args[0], r.output)
            event(f"{args[0]} exit {r.exit_code}")


def test_fit_with_no_usable_validation_rows_is_a_clear_error(tmp_path):
    from conftest import write_image

    for i in range(10):
        write_image(tmp_path / f"{i}.png", ["red", "blue"][i % 2], size=8, seed=i)
    pd.DataFrame({"img": [f"{i}.png" for i in range(8)], "label": ["a", "b"] * 4}).to_csv(tmp_path / "tr.csv",
                                                                                       index=False)
    pd.DataFrame({"img": ["8.png", "9.png"], "label": ["c", "c"]}).to_csv(tmp_path / "va.csv", index=False)
    r = runner.invoke(app, ["fit", str(tmp_path / "tr.csv"), "--valid", str(tmp_path / "va.csv"), "--label", "label",
                            "--out", str(tmp_path / "run"), "--image-encoder", "small-cnn", "--image-size", "16",
                            "--epochs", "1", "--column-types", "img=image"])
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "no validation row is left" in r.output
