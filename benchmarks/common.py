"""Helpers shared by the benchmark scripts: dataset location, table builders, Markdown output."""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

SHARED = Path(os.environ.get("POLYMODAL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
WORK = Path(os.environ.get("POLYMODAL_BENCH_WORK", Path(__file__).resolve().parent / ".work"))


def need(name: str) -> Path:
    path = SHARED / name
    if not path.exists():
        sys.exit(f"needs {path}: the shared datasets are not on this machine")
    return path


def vqa_rad_tables(closed_only: bool = True, with_answer_type: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """VQA-RAD with MEVF's standard split: train = freeform + para (1,797), test = test_* (451).
    `with_answer_type`: keep an `answer_type` column, "open" or "closed" (179 / 272 test questions)."""
    import json

    root = need("vqa-rad")
    rows = json.loads((root / "VQA_RAD_Dataset_Public.json").read_text())
    df = pd.DataFrame(rows)
    df["image"] = [str(root / "images" / n) for n in df["image_name"]]
    df["answer"] = df["answer"].astype(str).str.strip().str.lower()
    df["question"] = df["question"].astype(str)
    df["answer_type"] = df["answer_type"].astype(str).str.strip().str.lower()  # two read "CLOSED "
    if closed_only:
        df = df[df["answer_type"] == "closed"]
    train = df[df["phrase_type"].isin(["freeform", "para"])]
    test = df[df["phrase_type"].isin(["test_freeform", "test_para"])]
    cols = ["image", "question", "answer"] + (["answer_type"] if with_answer_type else [])
    return train[cols].reset_index(drop=True), test[cols].reset_index(drop=True)


def fsdd_av_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    """FSDD recordings paired with scikit-learn 8x8 digit images of the same label (official FSDD split)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root = need("fsdd-spoken-digits")
    pairs = pd.read_csv(root / "av_pairs_sklearn_digits.csv")
    digits = load_digits()
    img_dir = WORK / "sklearn_digits"
    img_dir.mkdir(parents=True, exist_ok=True)
    for r in sorted(set(pairs["sklearn_digits_row"])):
        path = img_dir / f"{r}.png"
        if not path.exists():
            arr = (digits.images[r] / 16.0 * 255).astype(np.uint8)
            Image.fromarray(arr).resize((32, 32), Image.NEAREST).save(path)
    df = pd.DataFrame({"audio": [str(root / "recordings" / f) for f in pairs["fsdd_file"]],
                       "image": [str(img_dir / f"{r}.png") for r in pairs["sklearn_digits_row"]],
                       "digit": pairs["label"].astype(str), "speaker": pairs["speaker"], "split": pairs["split"]})
    return (df[df.split == "train"].drop(columns="split").reset_index(drop=True),
            df[df.split == "test"].drop(columns="split").reset_index(drop=True))


def machine() -> str:
    import torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    return f"{dev}, torch {torch.__version__}, Python {platform.python_version()}"


def write_markdown(path: str | Path, title: str, command: str, table: pd.DataFrame, notes: str = "") -> str:
    md = f"## {title}\n\n`{command}`\n\nMachine: {machine()}; {time.strftime('%Y-%m-%d')}\n\n"
    md += table.to_markdown(index=False) + "\n"
    if notes:
        md += "\n" + notes.strip() + "\n"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(md)
    print(md)
    return md


def emit(text: str, path: str | Path) -> None:
    """Print a finished Markdown report and write it to `path` (creating its folder)."""
    print(text)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text, encoding="utf-8")
