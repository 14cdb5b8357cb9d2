"""Shared fixtures: small generated tables with real image/audio files, and the ../shared data location."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SHARED = Path(os.environ.get("POLYMODAL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def shared_data(name: str) -> Path:
    """Path to a dataset under ../shared/data, skipping the test with a clear reason when absent."""
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"needs the shared dataset {path} (absent on this machine)")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Every test gets its own feature cache, so cache hits are only the ones the test itself caused.
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path_factory.mktemp("cache")))


COLORS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}


def write_image(path: Path, color: str, size: int = 32, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = np.array(COLORS[color], dtype=np.float32)
    arr = np.clip(base + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path)


def write_wave(path: Path, freq: float, sr: int = 8000, seconds: float = 0.5, seed: int = 0) -> None:
    import soundfile as sf

    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    wave = 0.5 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.normal(size=t.shape)
    sf.write(path, wave.astype(np.float32), sr)


@pytest.fixture
def image_table(tmp_path) -> Path:
    """A CSV of 60 rows: image (relative path, colour = label), a numeric and a categorical column."""
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(60):
        color = ["red", "blue"][i % 2]
        write_image(img_dir / f"{i}.png", color, seed=i)
        rows.append({"id": i, "image": f"imgs/{i}.png", "size": float(rng.normal(10, 2)),
                     "shop": ["a", "b", "c"][i % 3], "label": color})
    path = tmp_path / "train.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture
def audio_table(tmp_path) -> Path:
    """A CSV of 40 rows: audio path (pitch = label) and a numeric column."""
    rows = []
    for i in range(40):
        label = ["low", "high"][i % 2]
        write_wave(tmp_path / f"{i}.wav", 300 if label == "low" else 1500, seed=i)
        rows.append({"clip": f"{i}.wav", "loudness": float(i % 5), "label": label})
    path = tmp_path / "audio.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # The test models are tiny: intra-op threads cost more in hand-offs than they save on 2 cores.
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def color_rows(root: Path, n: int, rng: np.random.Generator):
    """(i, colour, row) for n generated red/blue images under root/imgs: row has image, size, shop."""
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        color = ["red", "blue"][i % 2]
        write_image(root / "imgs" / f"{i}.png", color, seed=i)
        yield i, color, {"image": f"imgs/{i}.png", "size": float(rng.normal()), "shop": "abc"[i % 3]}


def color_table(root: Path, n: int = 80, caption_words: dict[str, list[str]] | None = None) -> Path:
    """root/train.csv: image (colour = label red/blue), numeric `size`, categorical `shop`, optional `caption`."""
    rng = np.random.default_rng(0)
    rows = []
    for _, color, row in color_rows(root, n, rng):
        row["label"] = color
        if caption_words:
            row["caption"] = "a " + " ".join(rng.choice(caption_words[color], size=int(rng.integers(1, 6)))) + " thing"
        rows.append(row)
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    return root / "train.csv"
