"""The media tables of benchmarks/automl_peer.py (issue 19), each on its published split, built by the
repo's own benchmark helpers (imported, not copied):

- vqa_rad_closed: VQA-RAD closed questions answered yes/no (image + question → yes/no). Train = freeform +
  para + the `question_frame` rewrites of those training questions only (vqa_rad.py's clean protocol; the
  284 rewrites of test questions are never used); test = the official test questions (test_freeform +
  test_para) of that kind. Rows sharing an image are grouped for folds and validation (`group_column`).
- fsdd_digits: FSDD recordings paired with scikit-learn 8x8 digit images of the same label, official FSDD
  split (takes 0-4 test), as benchmarks/common.py's `fsdd_av_tables` builds it for fsdd_av.py.
- easy_vqa: image + question → one of 13 answers; the package's test split (all 9,673 questions) and a
  per-seed sample of 200 training images with all their questions (about 1,900 rows: with 400 images, 3,812
  rows, a 60 s `--preset best` fit trained only its linear and k-NN members on two shared cores, and the one
  `--preset fast` network took 183 s).

What AutoGluon Tabular gets (`autogluon_view`): the same rows with the question as text (its n-gram
features); image and audio paths are strings it cannot read, so they are dropped, except the FSDD images,
which are natively tabular (scikit-learn's 64 pixel values) and given to it as 64 numeric columns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

MEDIA_TABLES = ("vqa_rad_closed", "fsdd_digits", "easy_vqa")
EASY_VQA_IMAGES = 200  # training images sampled per seed (about 1,900 questions)


# The helpers below import benchmarks/common.py and vqa_rad.py (which imports polymodal) when called: this module is
# also imported by automl_peer.py's AutoGluon worker, in a virtualenv without polymodal.
def vqa_rad_closed() -> tuple[pd.DataFrame, pd.DataFrame]:
    from vqa_rad import TEST_PHRASES, TRAIN_PHRASES, frames
    from vqa_rad import load as load_vqa_rad

    df = load_vqa_rad()
    df = df[(df["answer_type"] == "closed") & df["answer"].isin(["yes", "no"])]
    train = df[df["phrase_type"].isin(TRAIN_PHRASES)]
    train = pd.concat([train, frames(train)], ignore_index=True)  # rewrites of training questions only
    test = df[df["phrase_type"].isin(TEST_PHRASES)]
    cols = ["image", "question", "answer"]
    return train[cols].reset_index(drop=True), test[cols].reset_index(drop=True)


def fsdd_digits() -> tuple[pd.DataFrame, pd.DataFrame]:
    from common import fsdd_av_tables

    train, test = fsdd_av_tables()
    # the speaker carries no digit information (every speaker says every digit equally often): left out
    return train.drop(columns="speaker"), test.drop(columns="speaker")


def easy_vqa(seed: int, n_images: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    from polymodal.demo import easy_vqa_table

    return easy_vqa_table("train", n_images, seed=seed), easy_vqa_table("test")


def media_split(name: str, seed: int, easy_vqa_images: int = EASY_VQA_IMAGES) -> tuple[
        pd.DataFrame, pd.DataFrame, str, dict]:
    """(train, test, label, info): info holds `media_columns`, the polymodal `fit_options` (encoders and
    grouping, the same for every polymodal system and for warming the cache) and a `note`."""
    if name == "vqa_rad_closed":
        train, test = vqa_rad_closed()
        return train, test, "answer", {
            "media_columns": ["image"], "fit_options": {"group_column": "image"},
            "note": "VQA-RAD closed questions answered yes/no; train freeform + para + frames of training "
                    "questions only; official test questions; folds and validation grouped by image"}
    if name == "fsdd_digits":
        train, test = fsdd_digits()
        return train, test, "digit", {
            "media_columns": ["audio", "image"],
            # polymodal's default encoders with fsdd_av.py's audio settings (8 kHz, 1 s): the log-mel CNN trains
            # from scratch inside the fusion networks (no cached audio features: the frozen Whisper tiny.en pass
            # over the 3,000 clips ran past 60 min of wall clock on the shared 2-core machine and was stopped);
            # EfficientNet-Lite0 (frozen, cached) reads the 8x8 digits saved as 32x32 PNGs at 64 px
            "fit_options": {"encoder_opts": {"image": {"image_size": 64},
                                             "audio": {"sample_rate": 8000, "max_seconds": 1.0}}},
            "note": "FSDD official split (takes 0-4 test) paired with scikit-learn 8x8 digits of the same label"}
    if name == "easy_vqa":
        train, test = easy_vqa(seed, easy_vqa_images)
        return train, test, "answer", {
            "media_columns": ["image"], "fit_options": {"encoder_opts": {"image": {"image_size": 128}}},
            "note": f"easy-vqa: {easy_vqa_images} training images sampled per seed with all their questions; "
                    "the whole test split; images at 128 px as `polymodal demo` reads them"}
    raise SystemExit(f"unknown table {name!r}")


def autogluon_view(name: str, df: pd.DataFrame, media_columns: list[str]) -> tuple[pd.DataFrame, str]:
    """The table as AutoGluon Tabular reads it, and one line saying how it differs from polymodal's."""
    if name == "fsdd_digits":
        from sklearn.datasets import load_digits

        # the image file is benchmarks/.work/sklearn_digits/<row>.png (common.fsdd_av_tables)
        rows = [int(Path(p).stem) for p in df["image"]]
        pixels = pd.DataFrame(load_digits().data[rows], columns=[f"pixel_{i}" for i in range(64)], index=df.index)
        return pd.concat([df.drop(columns=media_columns), pixels], axis=1), \
            "audio path dropped; the digit image as its 64 scikit-learn pixel values (numeric columns)"
    if not media_columns:
        return df, "the same table"
    return df.drop(columns=media_columns), f"{', '.join(media_columns)} path dropped (AutoGluon Tabular reads " \
                                           "no images); text columns read as text (its n-gram features)"


def label_counts(train: pd.DataFrame, test: pd.DataFrame, label: str) -> dict:
    return {"train_rows": len(train), "test_rows": len(test),
            "classes": int(pd.concat([train[label], test[label]]).nunique()),
            "test_majority_accuracy": float(np.max(test[label].value_counts(normalize=True)))}
