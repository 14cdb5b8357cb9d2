"""The embedded default job: easy-vqa (synthetic shapes; MIT; shipped inside the `easy-vqa` PyPI package)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from polymodal.predictor import MultimodalPredictor


def _easy_vqa_split(split: str) -> tuple[list[str], list[str], list[int], list[str]]:
    """(questions, answers, image ids, image paths) of the `easy-vqa` package's train or test split."""
    import easy_vqa

    if split == "train":
        return (*easy_vqa.get_train_questions(), easy_vqa.get_train_image_paths())
    return (*easy_vqa.get_test_questions(), easy_vqa.get_test_image_paths())


def easy_vqa_table(split: str, n_images: int | None = None, seed: int = 0) -> pd.DataFrame:
    """One row per question: image path, question, answer; `n_images` images sampled with their questions."""
    qs, answers, ids, paths = _easy_vqa_split(split)
    df = pd.DataFrame({"image": [paths[i] for i in ids], "question": qs, "answer": answers, "image_id": ids})
    if n_images:
        keep = pd.Series(sorted(set(ids))).sample(min(n_images, len(set(ids))), random_state=seed)
        df = df[df["image_id"].isin(set(keep))].reset_index(drop=True)
    return df.drop(columns=["image_id"])


def run_demo(out: Path, train_images: int = 1200, test_images: int = 300, epochs: int = 15) -> dict:
    out = Path(out)
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    easy_vqa_table("train", train_images).to_csv(data / "train.csv", index=False)
    easy_vqa_table("test", test_images).to_csv(data / "test.csv", index=False)
    # easy-vqa images are 64x64: 128 px keeps EfficientNet's grid useful at a quarter of 224's cost.
    p = MultimodalPredictor(label="answer", path=out, encoder_opts={"image": {"image_size": 128}},
                            max_epochs=epochs, batch_size=128, lr=2e-3, patience=4)
    p.fit(data / "train.csv", test_data=data / "test.csv")
    return p.metrics["test"]


SHAPES = ("circle", "rectangle", "triangle")
COLOURS = ("black", "blue", "brown", "gray", "green", "red", "teal", "yellow")


def easy_vqa_captions(split: str, n_images: int | None = None, seed: int = 0) -> pd.DataFrame:
    """One row per easy-vqa image: its path and a caption "a <colour> <shape>".

    Shape and colour come from the image's "what ..." questions, whose wording and answers describe the
    shape that is present ("what color is the triangle?" → "blue"); yes/no questions also name absent ones,
    so they are not used. Images whose questions do not give both are left out.
    """
    qs, answers, ids, paths = _easy_vqa_split(split)
    found: dict[int, dict[str, set[str]]] = {}
    for q, a, i in zip(qs, answers, ids):
        if not q.startswith("what"):
            continue
        words = set(q.rstrip("?").split()) | {a}
        slot = found.setdefault(i, {"shape": set(), "colour": set()})
        slot["shape"] |= words & set(SHAPES)
        slot["colour"] |= words & set(COLOURS)
    rows = [{"image": paths[i], "caption": f"a {next(iter(s['colour']))} {next(iter(s['shape']))}"}
            for i, s in sorted(found.items()) if len(s["shape"]) == 1 and len(s["colour"]) == 1]
    df = pd.DataFrame(rows)
    if n_images and n_images < len(df):
        df = df.sample(n_images, random_state=seed).reset_index(drop=True)
    return df
