"""Video columns: real clips written with PyAV (H.264/AAC, VP9/Opus, MPEG-4/MP3, folders of PNG frames), frame
sampling, the sound track as its own audio input, encoders, the feature cache, fitting, errors and serving."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("av")

from polymodal import MultimodalPredictor  # noqa: E402
from polymodal.data.preprocess import Preprocessor  # noqa: E402
from polymodal.data.schema import infer_schema  # noqa: E402
from polymodal.data.video import (  # noqa: E402
    audio_track_key,
    has_audio_track,
    load_video,
    load_video_wave,
    read_frames,
)
from polymodal.data.video_write import write_video  # noqa: E402
from polymodal.encoders import build_encoder  # noqa: E402
from polymodal.errors import DataError  # noqa: E402

FPS = 12
SR = 16000
FAST = dict(max_epochs=8, batch_size=8, lr=3e-3, patience=8, progress=False, verbose=False)
SMALL = {"backbone": "small-cnn", "image_size": 32, "num_frames": 8}


def index_frames(n: int, size: int = 32) -> np.ndarray:
    """Frame i is uniform grey at level 8 * i: its index can be read back after lossy coding."""
    return np.stack([np.full((size, size, 3), 8 * i, np.uint8) for i in range(n)])


def tone(freq: float, seconds: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return (0.5 * np.sin(2 * np.pi * freq * t) + 0.02 * np.random.default_rng(seed).normal(size=t.shape))


def cue_frames(color: str | None, seed: int, n: int = 8, size: int = 32) -> np.ndarray:
    """Noise background with a moving 12-px square whose colour is the class (None: no square)."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(60, 140, (n, size, size, 3)).astype(np.uint8)
    if color:
        rgb = {"red": (230, 20, 20), "blue": (20, 20, 230)}[color]
        for i in range(n):
            x = (3 * i + seed) % (size - 12)
            frames[i, 10:22, x:x + 12] = rgb
    return frames


def cue_table(root: Path, n: int = 40, cue: str = "visual", ext: str = ".mp4") -> Path:
    """root/train.csv: `clip` (8 frames at 8 fps, 32 px) and `label`; the class is the square's colour
    (cue "visual", no sound) or a 400 Hz / 1600 Hz tone (cue "audio", frames without a square)."""
    (root / "clips").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        label = ["red", "blue"][i % 2]
        path = root / "clips" / f"{i}{ext}"
        if cue == "visual":
            write_video(path, cue_frames(label, i), fps=8)
        else:
            write_video(path, cue_frames(None, i), fps=8, audio=tone(400 if label == "red" else 1600, 1.0, i))
        rows.append({"clip": f"clips/{i}{ext}", "label": label})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    return root / "train.csv"


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    """24 frames at 12 fps (2 s), key frame every 6, with a 440 Hz tone; the same without sound; a folder."""
    root = tmp_path_factory.mktemp("clips")
    for ext in (".mp4", ".webm", ".avi"):
        write_video(root / f"tone{ext}", index_frames(24), fps=FPS, audio=tone(440, 2.0), gop=6)
    write_video(root / "silent.mp4", index_frames(24), fps=FPS, gop=6)
    (root / "frames").mkdir()
    from PIL import Image

    for i in range(12):
        Image.fromarray(index_frames(12)[i]).save(root / "frames" / f"frame{i}.png")
    return root


def frame_index(frames: np.ndarray) -> np.ndarray:
    return np.round(frames.reshape(len(frames), -1).mean(1) / 8).astype(int)


# ---- decoding and sampling ---------------------------------------------------------------------------------
@pytest.mark.parametrize("ext", [".mp4", ".webm", ".avi"])
def test_decode_each_container(clip_dir, ext):
    frames, times = read_frames(clip_dir / f"tone{ext}", 8, "uniform", size=16)
    assert frames.shape == (8, 16, 16, 3) and frames.dtype == np.uint8
    assert np.all(np.diff(times) > 0) and times[0] >= 0 and times[-1] < 2.0
    assert np.all(np.diff(frame_index(frames)) > 0)  # later targets show later frames


def test_uniform_sampling_picks_the_frame_shown_at_each_segment_centre(clip_dir):
    frames, times = read_frames(clip_dir / "tone.mp4", 8, "uniform", size=32)
    expected = (np.arange(8) + 0.5) * 2.0 / 8  # segment centres of the 2 s clip
    # the frame shown at t is the last one whose timestamp is ≤ t
    np.testing.assert_allclose(times, np.floor(expected * FPS) / FPS, atol=1e-6)
    np.testing.assert_array_equal(frame_index(frames), np.floor(expected * FPS).astype(int))


def test_fps_sampling_is_capped_and_masked(clip_dir):
    frames, times = read_frames(clip_dir / "tone.webm", 8, "fps", fps=4.0, size=32)
    np.testing.assert_allclose(times, np.arange(8) / 4.0, atol=1e-3)
    np.testing.assert_array_equal(frame_index(frames), np.arange(8) * 3)
    _, times = read_frames(clip_dir / "tone.webm", 8, "fps", fps=2.0, size=32)
    np.testing.assert_allclose(times, [0.0, 0.5, 1.0, 1.5], atol=1e-3)  # a 2 s clip has 4 frames at 2 fps
    cfg = {"num_frames": 8, "sampling": "fps", "fps": 2.0, "image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}
    x = load_video(str(clip_dir / "tone.webm"), cfg)
    assert x["frames"].shape == (8, 3, 32, 32) and x["mask"].tolist() == [True] * 4 + [False] * 4
    assert np.all(x["frames"][4:] == 0)


@pytest.mark.parametrize("ext", [".mp4", ".webm"])
def test_keyframe_sampling_decodes_only_key_frames(clip_dir, ext):
    import av

    with av.open(str(clip_dir / f"tone{ext}")) as c:  # reference: a full decode's key-frame flags
        keys = [(f.time, f.to_ndarray(format="rgb24").mean()) for f in c.decode(video=0) if f.key_frame]
    assert 2 <= len(keys) <= 8  # the encoder's key-frame interval (plus scene cuts)
    frames, times = read_frames(clip_dir / f"tone{ext}", 8, "keyframes", size=32)
    np.testing.assert_allclose(times, [t for t, _ in keys], atol=1e-6)
    np.testing.assert_array_equal(frame_index(frames), np.round([m / 8 for _, m in keys]).astype(int))
    frames, _ = read_frames(clip_dir / f"tone{ext}", 2, "keyframes", size=32)
    assert len(frames) == 2 and frame_index(frames)[0] == 0  # thinned evenly, the first kept


def test_seeking_matches_sequential_decoding(tmp_path):
    path = tmp_path / "long.mp4"
    write_video(path, index_frames(30, 16).repeat(8, axis=0), fps=FPS, gop=12)  # 240 frames, 20 s
    seek, t_seek = read_frames(path, 6, "uniform", size=16, seek_gap=0.0)
    full, t_full = read_frames(path, 6, "uniform", size=16, seek_gap=1e9)
    np.testing.assert_array_equal(t_seek, t_full)
    assert np.abs(seek.astype(int) - full.astype(int)).max() <= 1


def test_folder_of_frames(clip_dir, tmp_path):
    folder = clip_dir / "frames"  # frame0..frame11: natural order puts frame2 before frame10
    frames, times = read_frames(folder, 4, "uniform", size=16, folder_fps=12)
    np.testing.assert_array_equal(frame_index(frames), [1, 4, 7, 10])
    np.testing.assert_allclose(times, np.array([1, 4, 7, 10]) / 12)
    frames, _ = read_frames(folder, 8, "fps", fps=6.0, size=16, folder_fps=12)
    np.testing.assert_array_equal(frame_index(frames), [0, 2, 4, 6, 8, 10])
    frames, _ = read_frames(folder, 3, "keyframes", size=16)
    np.testing.assert_array_equal(frame_index(frames), [0, 6, 11])  # every image is a key frame
    shutil.copytree(folder, tmp_path / "other")
    df = pd.DataFrame({"clip": [str(folder), str(tmp_path / "other")] * 3, "y": [0, 1] * 3})
    assert infer_schema(df, "y").columns["clip"] == "video"
    assert load_video_wave(str(folder), SR) is None and not has_audio_track(str(folder))


def test_sound_track_and_missing_sound(clip_dir):
    for ext in (".mp4", ".webm", ".avi"):
        wave = load_video_wave(str(clip_dir / f"tone{ext}"), 8000, max_seconds=1.5)
        assert wave.shape == (12000,)
        spectrum = np.abs(np.fft.rfft(wave))
        assert abs(np.argmax(spectrum) * 8000 / len(wave) - 440) < 5
        assert has_audio_track(str(clip_dir / f"tone{ext}"))
    assert load_video_wave(str(clip_dir / "silent.mp4"), SR) is None
    assert not has_audio_track(str(clip_dir / "silent.mp4"))


def test_speech_track_when_espeak_is_installed(tmp_path):
    exe = shutil.which("espeak-ng")
    if not exe:
        pytest.skip("espeak-ng is not installed: speech tracks are covered by the tone tests")
    import soundfile as sf

    subprocess.run([exe, "-w", str(tmp_path / "s.wav"), "hello video"], check=True, capture_output=True)
    speech, sr = sf.read(tmp_path / "s.wav", dtype="float32")
    write_video(tmp_path / "s.mp4", index_frames(8), fps=8, audio=speech, sample_rate=sr)
    wave = load_video_wave(str(tmp_path / "s.mp4"), sr)
    assert len(wave) >= len(speech) * 0.95 and np.abs(wave).max() > 0.05


def test_corrupt_truncated_and_missing_files(clip_dir, tmp_path):
    data = (clip_dir / "tone.mp4").read_bytes()
    (tmp_path / "half.mp4").write_bytes(data[: len(data) // 2])  # the index (moov) is at the end: unreadable
    (tmp_path / "junk.mp4").write_bytes(b"not a video" * 100)
    for name in ("half.mp4", "junk.mp4", "absent.mp4"):
        with pytest.raises(DataError, match=name):
            read_frames(str(tmp_path / name), 4)
    # through fit: the row and column of the bad file are named
    root = tmp_path / "t"
    cue_table(root, n=12)
    df = pd.read_csv(root / "train.csv")
    (root / "clips" / "bad.mp4").write_bytes(data[: len(data) // 3])
    df.loc[5, "clip"] = "clips/bad.mp4"
    df.to_csv(root / "train.csv", index=False)
    p = MultimodalPredictor(label="label", encoders={"video": "frames-mean"}, encoder_opts={"video": SMALL},
                            **FAST)
    with pytest.raises(DataError, match=r"bad\.mp4") as err:
        p.fit(root / "train.csv")
    assert err.value.row == 5 and err.value.column == "clip"


def test_validate_decodes_every_frame(tmp_path):
    from polymodal.data.readers import read_table
    from polymodal.data.validate import validate_tables

    root = tmp_path / "v"
    cue_table(root, n=8)
    problems, schema = validate_tables({"train": read_table(root / "train.csv")}, "label", decode=True)
    assert schema["columns"]["clip"] == "video" and problems.empty
    (root / "clips" / "3.mp4").write_bytes(b"\x00" * 50)
    problems, _ = validate_tables({"train": read_table(root / "train.csv")}, "label", decode=True)
    assert problems["row"].tolist()[:1] == [3] and "3.mp4" in problems["problem"].iloc[0]


# ---- encoders ----------------------------------------------------------------------------------------------
def video_batch(b: int = 3, n: int = 4, size: int = 16, valid=(4, 2, 0)) -> dict:
    torch.manual_seed(0)
    mask = torch.zeros(b, n, dtype=torch.bool)
    for i, k in enumerate(valid):
        mask[i, :k] = True
    return {"frames": torch.randn(b, n, 3, size, size) * mask[..., None, None, None], "mask": mask}


@pytest.mark.parametrize("name", ["frames-mean", "frames-attn", "frames-transformer"])
def test_encoder_shapes_and_masking(name):
    enc = build_encoder("video", name, backbone="small-cnn", image_size=16, num_frames=4, hidden=32).eval()
    x = video_batch()
    out, tok = enc(x), enc.tokens(x)
    assert out.shape == (3, enc.out_dim) and tok.shape == (3, 4, enc.token_dim)
    assert torch.isfinite(out).all() and torch.isfinite(tok).all()
    assert torch.all(tok[1, 2:] == 0) and torch.all(tok[2] == 0) and torch.all(out[2] == 0)  # padding, empty row
    # a padded frame's pixels never matter
    y = {"frames": x["frames"].clone(), "mask": x["mask"]}
    y["frames"][1, 3] = 5.0
    torch.testing.assert_close(enc(y), out)
    # the clip's own output does not depend on its batch
    torch.testing.assert_close(enc({k: v[:1] for k, v in x.items()}), out[:1], atol=1e-5, rtol=1e-5)
    assert enc.pretrained is False and enc.audio_track


def test_pretrained_backbone_freezing():
    mean = build_encoder("video", "frames-mean", backbone="mobilenet_v2", image_size=32, audio=False)
    attn = build_encoder("video", "frames-attn", backbone="mobilenet_v2", image_size=32)
    assert mean.pretrained and not attn.pretrained and not mean.audio_track
    # attention pooling trains over a frozen backbone; finetune_backbone unfreezes it
    assert not any(p.requires_grad for p in attn.backbone.parameters())
    assert all(p.requires_grad for p in attn.score.parameters())
    ft = build_encoder("video", "frames-attn", backbone="mobilenet_v2", image_size=32, finetune_backbone=True)
    assert any(p.requires_grad for p in ft.backbone.parameters())
    attn.train()
    assert not attn.backbone.training  # BatchNorm statistics of the frozen backbone stay fixed


def test_bad_options_are_clear():
    from polymodal.errors import PolymodalError

    with pytest.raises(PolymodalError, match="unknown video encoder"):
        build_encoder("video", "frames-max")
    with pytest.raises(PolymodalError, match="frame sampling"):
        build_encoder("video", backbone="small-cnn", sampling="random")


def test_cached_features_equal_the_encoder_and_hit_on_second_run(tmp_path):
    """Frozen pretrained backbone + mean pooling: pooled features cached per file, reused by the next fit."""
    root = tmp_path / "c"
    cue_table(root, n=12)
    opts = {"video": {"backbone": "mobilenet_v2", "image_size": 32, "num_frames": 4, "audio": False}}
    first = MultimodalPredictor(label="label", encoder_opts=opts, **{**FAST, "max_epochs": 1}).fit(root / "train.csv")
    assert first.metrics["cache"] == {"computed": 12, "reused": 0}
    second = MultimodalPredictor(label="label", encoder_opts=opts, fusion="gated", **{**FAST, "max_epochs": 1})
    second.fit(root / "train.csv")
    assert second.metrics["cache"] == {"computed": 0, "reused": 12}
    # the cached vector is the encoder's own output on the decoded clip
    from polymodal.encoders.cache import precompute_features

    df = pd.read_csv(root / "train.csv").head(2)
    df.attrs["base_dir"] = str(root)
    enc = first.model.encoders["clip"]
    feats, _, stats = precompute_features(df, first.prep, {"clip": enc}, ["clip"])
    assert stats["reused"] == 2
    x = load_video(str(root / "clips" / "0.mp4"), first.prep.inputs["clip"].config)
    with torch.no_grad():
        ref = enc({k: torch.from_numpy(v[None]) for k, v in x.items()})
    np.testing.assert_allclose(feats["clip"][0][0], ref[0].numpy(), rtol=1e-4, atol=1e-4)


# ---- fitting -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def visual_run(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("visual")
    cue_table(root, n=40)
    p = MultimodalPredictor(label="label", path=root / "run", encoders={"video": "frames-mean"},
                            encoder_opts={"video": SMALL}, **FAST).fit(root / "train.csv")
    return p, root


def test_fit_learns_a_visual_cue(visual_run):
    p, root = visual_run
    assert p.metrics["valid"]["accuracy"] >= 0.85, p.metrics
    assert p.prep.inputs["clip"].modality == "video"
    track = p.prep.inputs[audio_track_key("clip")]
    assert track.modality == "audio" and track.config["source"] == "video" and track.columns == ["clip"]
    df = pd.read_csv(root / "train.csv")
    df.attrs["base_dir"] = str(root)
    assert (p.predict(df) == df["label"]).mean() >= 0.85


def test_run_folder_round_trip(visual_run):
    p, root = visual_run
    df = pd.read_csv(root / "train.csv").head(6)
    df.attrs["base_dir"] = str(root)
    df.loc[2, "clip"] = np.nan  # a missing video is a missing modality
    loaded = MultimodalPredictor.load(root / "run")
    np.testing.assert_allclose(loaded.predict_proba(df).to_numpy(), p.predict_proba(df).to_numpy(), atol=1e-5)


def test_silent_clips_have_no_sound_input(visual_run):
    from polymodal.data.dataset import TableDataset

    p, root = visual_run
    df = pd.read_csv(root / "train.csv").head(2)
    df.attrs["base_dir"] = str(root)
    item = TableDataset(df, p.prep, with_target=False)[0]
    assert item["present"]["clip"] and not item["present"][audio_track_key("clip")]


@pytest.mark.parametrize("name", ["frames-attn", "frames-transformer"])
def test_temporal_poolings_fit(tmp_path, name):
    torch.manual_seed(0)
    cue_table(tmp_path, n=32)
    p = MultimodalPredictor(label="label", encoders={"video": name},
                            encoder_opts={"video": {**SMALL, "num_frames": 4, "hidden": 64, "audio": False}},
                            **{**FAST, "max_epochs": 6}).fit(tmp_path / "train.csv")
    assert p.metrics["valid"]["accuracy"] >= 0.85, p.metrics


def test_fit_learns_a_sound_track_cue(tmp_path):
    """Frames carry nothing; the class is the pitch of the clips' sound: only the "<col>:audio" input has it."""
    torch.manual_seed(0)
    cue_table(tmp_path, n=32, cue="audio", ext=".webm")
    p = MultimodalPredictor(label="label", encoder_opts={"video": {**SMALL, "num_frames": 2},
                                                         "audio": {"sample_rate": 8000, "max_seconds": 0.5}},
                            **{**FAST, "max_epochs": 10, "patience": 10}).fit(tmp_path / "train.csv")
    assert p.metrics["valid"]["accuracy"] >= 0.85, p.metrics


def test_every_fusion_takes_video_and_sound_inputs(tmp_path):
    """Cached video features (pretrained backbone, mean pooling) + the sound track + a numeric column, one
    epoch per fusion; token fusions see the sound track as tokens."""
    from polymodal.fusion import FUSIONS

    cue_table(tmp_path, n=12, cue="audio")
    df = pd.read_csv(tmp_path / "train.csv")
    df["size"] = np.random.default_rng(0).normal(size=len(df))
    df.to_csv(tmp_path / "train.csv", index=False)
    opts = {"video": {"backbone": "mobilenet_v2", "image_size": 32, "num_frames": 2},
            "audio": {"sample_rate": 8000, "max_seconds": 0.5}}
    for fusion in sorted(FUSIONS):
        p = MultimodalPredictor(label="label", fusion=fusion, encoder_opts=opts, **{**FAST, "max_epochs": 1})
        p.fit(tmp_path / "train.csv")
        assert set(p.model.encoders) == {"clip", "clip:audio", "tabular"}, fusion
        assert ("clip:audio" in p.model.token_inputs) == FUSIONS[fusion].accepts_tokens


def test_frozen_sound_encoder_caches_only_clips_with_sound(tmp_path):
    """A frozen audio encoder on the sound track goes through the feature cache; silent clips are missing."""
    from polymodal.encoders.cache import precompute_features
    from polymodal.training.build import build_encoders
    from polymodal.training.config import FitConfig

    (tmp_path / "c").mkdir()
    for i in range(6):
        write_video(tmp_path / "c" / f"{i}.mp4", cue_frames(None, i, n=4), fps=8,
                    audio=tone(500, 0.5, i) if i % 2 else None)
    df = pd.DataFrame({"clip": [f"c/{i}.mp4" for i in range(6)], "label": ["a", "b"] * 3})
    df.attrs["base_dir"] = str(tmp_path)
    schema = infer_schema(df, "label")
    cfg = FitConfig(label="label", encoder_opts={"video": SMALL, "audio": {"sample_rate": 8000, "max_seconds": 0.5}})
    encoders, pre = build_encoders(schema, cfg)
    prep = Preprocessor.fit(df, schema, pre)
    key = audio_track_key("clip")
    feats, problems, stats = precompute_features(df, prep, {key: encoders[key].freeze()}, [key])
    assert not problems and stats == {"computed": 3, "reused": 0}
    assert feats[key][1].tolist() == [False, True] * 3
    _, _, stats = precompute_features(df, prep, {key: encoders[key]}, [key])
    assert stats == {"computed": 0, "reused": 3}


def test_schema_and_preprocess_round_trip(tmp_path):
    cue_table(tmp_path, n=6)
    from polymodal.data.readers import read_table
    from polymodal.training.build import build_encoders
    from polymodal.training.config import FitConfig

    df = read_table(tmp_path / "train.csv")
    schema = infer_schema(df, "label")
    assert schema.columns == {"clip": "video"}
    cfg = FitConfig(label="label", encoder_opts={"video": SMALL})
    encoders, pre = build_encoders(schema, cfg)
    assert set(encoders) == {"clip", "clip:audio"}
    prep = Preprocessor.fit(df, schema, pre)
    again = Preprocessor.from_dict(prep.to_dict())
    assert {k: s.to_dict() for k, s in again.inputs.items()} == {k: s.to_dict() for k, s in prep.inputs.items()}
    assert again.inputs["clip"].config["num_frames"] == 8


# ---- serving -----------------------------------------------------------------------------------------------
def test_serve_video_upload(visual_run):
    pytest.importorskip("fastapi")
    pytest.importorskip("multipart")
    from fastapi.testclient import TestClient

    from polymodal.serve.app import create_app

    p, root = visual_run
    loaded = MultimodalPredictor.load(root / "run")
    df = pd.read_csv(root / "train.csv").head(3)
    df.attrs["base_dir"] = str(root)
    expected = loaded.predict_proba(df)
    with TestClient(create_app(loaded, max_wait_ms=2)) as client:
        schema = client.get("/schema").json()
        assert [(i["name"], i["input"], i["accept"]) for i in schema["inputs"]] == [("clip", "file", "video/*")]
        for i, row in df.iterrows():
            data = (root / row["clip"]).read_bytes()
            r = client.post("/predict", files={"clip": (f"{i}.mp4", data, "video/mp4")})
            assert r.status_code == 200, r.text
            for cls, prob in r.json()["probabilities"].items():
                assert prob == pytest.approx(float(expected.loc[i, cls]), abs=1e-5)
        bad = client.post("/predict", files={"clip": ("x.mp4", b"\x00" * 300, "video/mp4")})
        assert bad.status_code == 422 and "video" in bad.json()["detail"]
        wrong = client.post("/predict", files={"clip": ("x.png", b"\x89PNG", "image/png")})
        assert wrong.status_code == 415
