"""Image → speech: a caption run writes the text, an offline text-to-speech engine voices it.

>>> spoken = speak_image("runs/caption", "photo.png")        # Spoken(text="a red circle", wave, sample_rate)
>>> spoken.save("caption.wav")
>>> speak_table("test.csv", "speech/", run="runs/caption")   # one WAV per row + speech.csv
>>> speak_table("notes.csv", "speech/", column="summary")    # any text column, no model

`polymodal speak` is the command-line front; the engines live in `polymodal.tasks.tts`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import typer
from rich.table import Table

from polymodal.data.readers import as_table, is_missing
from polymodal.errors import DataError, PolymodalError, console, user_errors
from polymodal.problem_types import GENERATION
from polymodal.runs import load_run
from polymodal.tasks.tts import ENGINES, Voice, engine_status, load_engine, speak, write_wav
from polymodal.types import IMAGE

MANIFEST = "speech.csv"


@dataclass
class Spoken:
    """A text and its voice: float32 mono `wave` at `sample_rate`."""

    text: str
    wave: np.ndarray
    sample_rate: int

    @property
    def seconds(self) -> float:
        return len(self.wave) / self.sample_rate

    def save(self, path: str | os.PathLike) -> Path:
        return write_wav(path, self.wave, self.sample_rate)


def speak_text(text: str, engine: str | Voice | None = None, **engine_options) -> Spoken:
    """Voice any text (see `polymodal.tasks.tts.speak` for the engines)."""
    wave, sr = speak(text, engine, **engine_options)
    return Spoken(text.strip(), wave, sr)


def is_text_generator(predictor) -> bool:
    """True for a caption / vqa-open run's predictor (its predictions are texts to voice)."""
    return getattr(getattr(predictor, "task", None), "problem_type", None) == GENERATION


def load_captioner(run: str | os.PathLike | Any, device: str | None = None):
    """A text generator from a run folder (or an already loaded predictor), refusing other kinds of run."""
    p = load_run(run, device=device) if isinstance(run, (str, os.PathLike)) else run
    if not is_text_generator(p):
        label = getattr(getattr(getattr(p, "prep", None), "schema", None), "label", "?")
        raise PolymodalError(f"{run} predicts '{label}' but does not write text: speak needs a caption "
                             "(or vqa-open) run, e.g. `polymodal fit TABLE --task caption --label caption`")
    return p


def image_column(predictor, column: str | None = None) -> str:
    """The run's image input: `column` when given (checked), else its only image column."""
    columns = predictor.prep.schema.columns
    images = [c for c, m in columns.items() if m == IMAGE]
    if column is not None:
        if columns.get(column) != IMAGE:
            raise PolymodalError(f"'{column}' is not an image input of this run (image inputs: "
                                 f"{', '.join(images) or 'none'})")
        return column
    if len(images) != 1:
        raise PolymodalError(f"this run has {len(images)} image inputs ({', '.join(images) or 'none'}): "
                             "name the one the image goes to")
    return images[0]


def speak_image(run, image: str | os.PathLike, engine: str | Voice | None = None, column: str | None = None,
                values: dict[str, Any] | None = None, decode: dict | None = None, **engine_options) -> Spoken:
    """Caption `image` with a caption run (folder or loaded predictor) and voice the caption.

    `values`: the run's other inputs for this row (e.g. {"question": ...} for a vqa-open run); missing ones
    are treated as missing modalities. `decode`: generation settings (method, num_beams, ...)."""
    path = Path(image)
    if not path.is_file():  # checked before the model loads: a typo fails at once
        raise DataError("image file not found", file=str(image))
    p = load_captioner(run)
    row = {**(values or {}), image_column(p, column): str(path.resolve())}
    text = str(p.predict(pd.DataFrame([row]), **(decode or {})).iloc[0])
    return speak_text(text, engine, **engine_options)


def speak_table(table, out_dir: str | os.PathLike, column: str | None = None, run=None,
                engine: str | Voice | None = None, decode: dict | None = None, **engine_options) -> pd.DataFrame:
    """One WAV per row of `table` in `out_dir`: the text of `column`, or the caption `run` writes for the row.

    Rows with no text get no file. Returns (and writes as `out_dir/speech.csv`) the manifest: row, text, wav
    (relative to out_dir), seconds."""
    if (column is None) == (run is None):
        raise PolymodalError("give either a text column to read or a caption run to write the texts")
    df = as_table(table)
    if column is not None:
        if column not in df.columns:
            raise DataError(f"no column '{column}' (columns: {', '.join(map(str, df.columns))})",
                            file=df.attrs.get("source"))
        texts = [None if is_missing(v) else str(v) for v in df[column]]
    else:
        texts = [str(t) for t in load_captioner(run).predict(df, **(decode or {}))]
    voice = engine if isinstance(engine, Voice) else load_engine(engine, **engine_options)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    width = max(5, len(str(len(df))))
    for i, text in enumerate(texts):
        if text is None or not text.strip():
            rows.append({"row": i, "text": text or "", "wav": "", "seconds": 0.0})
            continue
        spoken = speak_text(text, voice)
        name = f"{i:0{width}d}.wav"
        spoken.save(out / name)
        rows.append({"row": i, "text": spoken.text, "wav": name, "seconds": round(spoken.seconds, 3)})
    manifest = pd.DataFrame(rows, columns=["row", "text", "wav", "seconds"])
    manifest.to_csv(out / MANIFEST, index=False)
    return manifest


# --------------------------------------------------------------------------- command line

def _options(specs: list[str] | None) -> dict[str, Any]:
    """KEY=VALUE engine options; numbers become int or float ("rate=140", "noise_scale=0")."""
    out: dict[str, Any] = {}
    for spec in specs or []:
        key, sep, value = spec.partition("=")
        if not sep or not key.strip():
            raise PolymodalError(f"engine option {spec!r} is not KEY=VALUE")
        for cast in (int, float):
            try:
                out[key.strip()] = cast(value)
                break
            except ValueError:
                continue
        else:
            out[key.strip()] = value
    return out


def print_engines() -> None:
    table = Table(title="text-to-speech engines")
    table.add_column("engine")
    table.add_column("status")
    for name, problem in engine_status().items():
        table.add_row(name, "[green]ready[/]" if problem is None else f"[red]{problem}[/]")
    console.print(table)


@user_errors
def speak_command(
    run: Path | None = typer.Argument(None, help="caption (or vqa-open) run folder"),
    image: Path | None = typer.Argument(None, help="image to caption and voice"),
    text: str | None = typer.Option(None, help="voice this text instead (no run)"),
    table: Path | None = typer.Option(None, help="a table: one WAV per row (its --column, or RUN's caption)"),
    column: str | None = typer.Option(None, help="the table's text column to voice"),
    out: Path | None = typer.Option(None, help="WAV file (default caption.wav / speech.wav), or the folder "
                                               "for --table (default speech/)"),
    engine: str | None = typer.Option(None, help=f"{' | '.join(ENGINES)} (default: the first installed)"),
    option: list[str] | None = typer.Option(None, "--option", "-o", help="engine setting KEY=VALUE "
                                            "(piper: model, length_scale, noise_scale, noise_w; espeak-ng: "
                                            "voice, rate, pitch)"),
    engines: bool = typer.Option(False, "--engines", help="list the engines and whether each is installed"),
) -> None:
    """Speak: an image's caption from a caption run, any text, or a table's text column (offline TTS)."""
    if engines:
        print_engines()
        return
    opts = _options(option)
    if table is not None:
        if image is not None or text is not None:
            raise PolymodalError("--table voices a whole table: give no IMAGE or --text with it")
        manifest = speak_table(table, out or Path("speech"), column=column, run=run, engine=engine, **opts)
        done = manifest[manifest["wav"] != ""]
        console.print(f"{len(done)} WAV files ({done['seconds'].sum():.1f} s of speech) in {out or 'speech'}; "
                      f"{len(manifest) - len(done)} rows without text; manifest {MANIFEST}")
        return
    if column is not None:
        raise PolymodalError("--column names the text column of a --table")
    if text is not None:
        if run is not None:
            raise PolymodalError("--text is voiced as it is: give no RUN with it")
        spoken, target = speak_text(text, engine, **opts), out or Path("speech.wav")
    elif run is not None and image is not None:
        spoken, target = speak_image(run, image, engine, **opts), out or Path("caption.wav")
    else:
        raise PolymodalError("say what to speak: RUN IMAGE, --text TEXT, or --table TABLE (--column C or RUN)")
    spoken.save(target)
    print(spoken.text)
    console.print(f"{target}: {spoken.seconds:.2f} s at {spoken.sample_rate} Hz")
