"""Request values → one model row, decoded from uploaded bytes with the same transforms as training.

The server never opens a path taken from a request: media columns accept uploaded bytes only, and
`load_image` / `load_audio_features` receive an in-memory `BytesIO` (PIL and soundfile read file objects),
so the normalisation and log-mel are exactly those of `polymodal.data.transforms`. Video uploads are decoded by
PyAV from memory (`data.video`): the frames feed the video input and the sound track, if any, the
"<column>:audio" input. Time series come as a JSON array (in a JSON body or a form field) or an uploaded
.npy/.csv file.

Everything costly happens here, in the request's own worker thread, so the micro-batcher receives ready items:
text is length-checked and tokenised here and cut to the prefix that the model sees (`RowBuilder._text`), and
JSON bodies are parsed here with a nesting limit (`parse_json_body`).
"""

from __future__ import annotations

import copy
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from polymodal.data.dataset import placeholder
from polymodal.data.preprocess import Preprocessor
from polymodal.data.text import get_tokenizer
from polymodal.data.timeseries import as_array, load_series, prepare_series
from polymodal.data.transforms import load_audio_features, load_image
from polymodal.data.video import load_video, video_size
from polymodal.errors import DataError
from polymodal.types import AUDIO, CATEGORICAL, IMAGE, NUMERIC, TABULAR, TEXT, TIMESERIES, VIDEO

MB = 1024 * 1024
MAX_JSON_DEPTH = 32  # a /predict body is 2 levels deep (a time series); /search's is 2
MAX_TEXT_CHARS = 100_000  # tokenising this many characters takes about 0.1 s; the model reads the first tokens only


class InputError(Exception):
    """A request that gets no answer: HTTP `status` with {"detail": message, "field": field} (a 4xx for a client
    mistake, 503 while the model is not ready)."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


def json_depth(value: Any, limit: int) -> int:
    """Nesting depth of parsed JSON (arrays and objects), counted iteratively; stops once past `limit`."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (list, dict)):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                break
            stack.extend((x, depth) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def parse_json_body(raw: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """A request body → JSON, or a 422 for invalid or too deeply nested JSON (never a RecursionError/500)."""
    too_deep = InputError(422, f"the JSON body is nested too deeply: at most {max_depth} levels of arrays and "
                               "objects are accepted")
    try:
        body = json.loads(raw)
    except RecursionError:  # json's C parser recurses per level and stops at the interpreter's limit
        raise too_deep from None
    except ValueError:
        raise InputError(422, "the body is not valid JSON") from None
    if json_depth(body, max_depth) > max_depth:
        raise too_deep
    return body


@dataclass(frozen=True)
class Upload:
    """An uploaded file, already read into memory (its size was checked against the limit)."""

    data: bytes
    content_type: str = ""
    filename: str = ""


@dataclass(frozen=True)
class Field:
    name: str
    modality: str  # image | audio | video | timeseries | text | numeric | categorical
    choices: tuple[str, ...] = ()

    @property
    def is_file(self) -> bool:
        return self.modality in (IMAGE, AUDIO, VIDEO)

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"name": self.name, "modality": self.modality,
                             "input": "file" if self.is_file else "number" if self.modality == NUMERIC else "text"}
        if self.is_file:
            d["accept"] = f"{self.modality}/*"
        if self.choices:
            d["choices"] = list(self.choices)
        return d


def model_fields(prep: Preprocessor) -> dict[str, Field]:
    """The request fields a model accepts: one per input column, in the model's input order."""
    fields: dict[str, Field] = {}
    for spec in prep.inputs.values():
        if spec.modality == TABULAR:
            for col in spec.config["numeric"]:
                fields[col] = Field(col, NUMERIC)
            for col in spec.config["categorical"]:
                fields[col] = Field(col, CATEGORICAL, tuple(prep.vocab.get(col, ())))
        elif spec.config.get("source") != VIDEO:  # a video's sound track comes with the video upload
            fields[spec.columns[0]] = Field(spec.columns[0], spec.modality)
    return fields


class RowBuilder:
    """Validates request values against the model's fields and builds a Collator item (one row)."""

    def __init__(self, prep: Preprocessor, max_file_bytes: int = 10 * MB, max_pixels: int = 40_000_000,
                 max_text_chars: int = MAX_TEXT_CHARS) -> None:
        self.prep, self.max_file_bytes, self.max_pixels = prep, max_file_bytes, max_pixels
        self.max_text_chars = max_text_chars
        self.fields = model_fields(prep)
        self._tokenizers = {key: _private_tokenizer(spec.config) for key, spec in prep.inputs.items()
                            if spec.modality == TEXT and "tokenizer" in spec.config}

    @property
    def file_fields(self) -> list[str]:
        return [n for n, f in self.fields.items() if f.is_file]

    def _field(self, name: str) -> Field:
        if name not in self.fields:
            raise InputError(422, f"unknown field '{name}'; this model's inputs are: {', '.join(self.fields)}",
                             name)
        return self.fields[name]

    # ---- parsing ------------------------------------------------------------------------------------
    def from_json(self, body: Any) -> dict[str, Any]:
        """A JSON object of text/numeric/categorical values (media need multipart uploads)."""
        if not isinstance(body, dict):
            raise InputError(422, "the JSON body must be an object mapping column names to values")
        values: dict[str, Any] = {}
        for name, v in body.items():
            f = self._field(name)
            if f.is_file:
                raise InputError(422, f"column '{name}' is {f.modality}: upload the file as multipart/form-data; "
                                      "paths and URLs are never read by the server", name)
            if v is None:
                continue
            if f.modality == NUMERIC:
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise InputError(422, f"column '{name}' is numeric: expected a number, got {type(v).__name__}",
                                     name)
                values[name] = self._number(name, v)
            elif f.modality == CATEGORICAL:
                if isinstance(v, bool) or not isinstance(v, (str, int, float)):
                    raise InputError(422, f"column '{name}' is categorical: expected a string, got "
                                          f"{type(v).__name__}", name)
                if str(v).strip():
                    values[name] = self._check_length(name, str(v))
            elif f.modality == TIMESERIES:
                series = self._series_json(name, v)
                if series is not None:
                    values[name] = series
            else:
                if not isinstance(v, str):
                    raise InputError(422, f"column '{name}' is text: expected a string, got {type(v).__name__}",
                                     name)
                if v.strip():
                    values[name] = self._check_length(name, v)
        return values

    async def from_form(self, form) -> dict[str, Any]:
        """A multipart form (starlette FormData): files for image/audio columns, strings for the rest."""
        values: dict[str, Any] = {}
        seen: set[str] = set()
        for name, v in form.multi_items():
            f = self._field(name)
            if name in seen:
                raise InputError(422, f"field '{name}' is given more than once", name)
            seen.add(name)
            is_upload = not isinstance(v, str)
            if f.is_file or (is_upload and f.modality == TIMESERIES):  # a series may come as a .npy/.csv file
                if not is_upload:
                    raise InputError(422, f"column '{name}' is {f.modality}: send the file itself as a multipart "
                                          "upload; paths and URLs are never read by the server", name)
                if v.size is not None and v.size > self.max_file_bytes:
                    raise InputError(413, f"file for column '{name}' is {v.size / MB:.1f} MB; the limit is "
                                          f"{self.max_file_bytes / MB:g} MB", name)
                data = await v.read()
                if len(data) > self.max_file_bytes:
                    raise InputError(413, f"file for column '{name}' is larger than the "
                                          f"{self.max_file_bytes / MB:g} MB limit", name)
                if not data and not v.filename:  # a browser's empty file input: the modality is missing
                    continue
                values[name] = Upload(data, v.content_type or "", v.filename or "")
                continue
            if is_upload:
                raise InputError(422, f"column '{name}' is {f.modality}: send it as a form field, not a file", name)
            if not v.strip():
                continue
            if f.modality == NUMERIC:
                try:
                    number = float(v)
                except ValueError:
                    raise InputError(422, f"column '{name}' is numeric: {v[:40]!r} is not a number", name) from None
                values[name] = self._number(name, number)
            elif f.modality == TIMESERIES:
                series = self._series_json(name, v)
                if series is not None:
                    values[name] = series
            else:
                values[name] = self._check_length(name, v)
        return values

    def _check_length(self, name: str, v: str) -> str:
        if len(v) > self.max_text_chars:
            raise InputError(413, f"column '{name}' has {len(v):,} characters; the limit is "
                                  f"{self.max_text_chars:,} (serve --max-text-chars)", name)
        return v

    @staticmethod
    def _series_json(name: str, v: Any) -> np.ndarray | None:
        """A JSON array (or its text) of numbers or of per-step rows → float32 (T, C); empty → None (missing)."""
        if isinstance(v, str):
            try:
                v = json.loads(v)
            except ValueError:
                raise InputError(422, f"column '{name}' is a time series: send a JSON array of numbers", name) \
                    from None
        if not isinstance(v, list):
            raise InputError(422, f"column '{name}' is a time series: expected a JSON array, got "
                                  f"{type(v).__name__}", name)
        if not v:
            return None
        try:
            return as_array(v, "the series")
        except DataError as exc:
            raise InputError(422, f"column '{name}': {exc.detail}", name) from None

    def _number(self, name: str, v: float) -> float:
        x = float(v)
        if not math.isfinite(x):
            raise InputError(422, f"column '{name}' is numeric: expected a finite number, got {v!r}", name)
        return x

    # ---- decoding -----------------------------------------------------------------------------------
    def build(self, values: dict[str, Any], require_input: bool = True) -> dict:
        """Values → a Collator item (as TableDataset.__getitem__ makes); missing inputs get presence False."""
        if require_input and not values:
            raise InputError(422, "no inputs: send at least one of: " + ", ".join(self.fields))
        item: dict = {"row": 0, "inputs": {}, "features": {}, "present": {}}
        for key, spec in self.prep.inputs.items():
            if spec.modality == TABULAR:
                continue
            col = spec.columns[0]
            v = values.get(col)
            item["present"][key] = v is not None
            if spec.config.get("source") == VIDEO:  # the sound of the uploaded video, if it has any
                x = None if v is None else self._sound_track(col, v, spec.config)
                item["present"][key] = x is not None
                item["inputs"][key] = placeholder(AUDIO, spec.config) if x is None else x
            elif spec.modality in (IMAGE, AUDIO):
                item["inputs"][key] = placeholder(spec.modality, spec.config) if v is None else \
                    (self._image if spec.modality == IMAGE else self._audio)(col, v, spec.config)
            elif spec.modality in (VIDEO, TIMESERIES):
                item["inputs"][key] = placeholder(spec.modality, spec.config) if v is None else \
                    (self._video if spec.modality == VIDEO else self._series)(col, v, spec.config)
            elif v is not None and key in self._tokenizers:
                item["inputs"][key] = self._text(key, v)
            else:
                item["inputs"][key] = v
        if TABULAR in self.prep.inputs:
            cfg = self.prep.inputs[TABULAR].config
            row = {c: values.get(c, np.nan) for c in cfg["numeric"]}
            row.update({c: values.get(c) for c in cfg["categorical"]})
            try:
                with np.errstate(over="ignore"):
                    arrays = self.prep.tabular_arrays(pd.DataFrame([row]))
            except DataError as exc:  # beyond data.stats.MAX_ABS, or overflowing float32 once standardised
                raise InputError(422, f"column '{exc.column}' is out of range for this model", exc.column) from None
            item["inputs"][TABULAR] = {k: a[0] for k, a in arrays.items()}
            item["present"][TABULAR] = True  # as in training: tabular is always present, NaNs flagged
        return item

    def probe_item(self) -> dict:
        """A neutral row with every input marked present (zeros, empty text, unmasked steps): reaches every encoder."""
        item = self.build({}, require_input=False)
        for key, x in item["inputs"].items():
            item["present"][key] = True
            if isinstance(x, dict) and "mask" in x:  # video frames / series steps: all masked would be no input
                item["inputs"][key] = {**x, "mask": np.ones_like(x["mask"])}
        return item

    def _text(self, key: str, text: str) -> str:
        """Tokenise here (the request's thread) and keep only the prefix whose tokens the model reads.

        The Collator tokenises again in the batch, with truncation to `max_length` tokens, so a long text would
        cost its full tokenisation on the batching path; the prefix ending at the last kept token gives the
        same token ids (checked here; the whole text is kept in the rare case where it would not)."""
        tok, max_length = self._tokenizers[key]
        if tok is None:  # a tokenizer without offsets (not a "fast" one): the Collator gets the whole text
            return text
        enc = tok([text], truncation=True, max_length=max_length, return_offsets_mapping=True)
        ends = [end for start, end in enc["offset_mapping"][0] if end > start]  # special tokens are (0, 0)
        prefix = text[:max(ends)] if ends else ""
        if prefix == text or tok([prefix], truncation=True, max_length=max_length)["input_ids"] == enc["input_ids"]:
            return prefix
        return text

    @staticmethod
    def _check_type(col: str, up: Upload, modality: str) -> None:
        ct = up.content_type.split(";")[0].strip().lower()
        if ct and not (ct.startswith(f"{modality}/") or ct == "application/octet-stream"):
            raise InputError(415, f"column '{col}' takes an {modality} file; got content type '{ct}'", col)
        if not up.data:
            raise InputError(422, f"the uploaded file for column '{col}' is empty", col)

    def _checked_decode(self, col: str, up: Upload, modality: str, size_of: Callable, decode: Callable,
                        not_this: str):
        """Check the upload's type and pixel size from its header alone (a decompression bomb is refused before
        any pixel is decoded), then decode it. Any decoder error on client bytes is the client's file (422),
        never a 5xx."""
        self._check_type(col, up, modality)
        try:
            w, h = size_of(io.BytesIO(up.data))
        except InputError:
            raise
        except Exception:
            raise InputError(422, f"cannot decode the uploaded {modality} for column '{col}' ({not_this})",
                             col) from None
        if w * h > self.max_pixels:
            what = f"video frames for column '{col}' are" if modality == VIDEO else f"image for column '{col}' is"
            raise InputError(413, f"{what} {w}x{h} pixels; the limit is {self.max_pixels:,} pixels", col)
        try:
            return decode(io.BytesIO(up.data))
        except Exception:
            raise InputError(422, f"cannot decode the uploaded {modality} for column '{col}' (corrupt file)", col) \
                from None

    def _image(self, col: str, up: Upload, cfg: dict) -> np.ndarray:
        from PIL import Image

        def size_of(f) -> tuple[int, int]:
            try:
                with Image.open(f) as im:
                    return im.size
            except Image.DecompressionBombError as exc:  # PIL's own limit, checked while reading the header
                raise InputError(413, f"image for column '{col}' has too many pixels; the limit is "
                                      f"{self.max_pixels:,} pixels ({exc})", col) from None

        return self._checked_decode(col, up, IMAGE, size_of,
                                    lambda f: load_image(f, cfg["image_size"], cfg["mean"], cfg["std"]),
                                    "not a PNG/JPEG/... image")

    def _audio(self, col: str, up: Upload, cfg: dict) -> np.ndarray:
        self._check_type(col, up, AUDIO)
        try:
            return load_audio_features(io.BytesIO(up.data), cfg)
        except (DataError, Exception):  # any decoder error on client bytes is the client's file, not a 5xx
            raise InputError(422, f"cannot decode the uploaded audio for column '{col}' "
                                  "(WAV/FLAC/OGG expected)", col) from None

    def _video(self, col: str, up: Upload, cfg: dict) -> dict:
        return self._checked_decode(col, up, VIDEO, video_size, lambda f: load_video(f, cfg),
                                    "not an MP4/WebM/AVI/... video")

    def _sound_track(self, col: str, up: Upload, cfg: dict) -> np.ndarray | None:
        try:
            return load_audio_features(io.BytesIO(up.data), cfg)
        except Exception:  # the video input reports an undecodable upload; here it is only a missing sound
            return None

    @staticmethod
    def _series(col: str, v: Any, cfg: dict) -> dict:
        try:
            arr = load_series(v.data, v.filename or None) if isinstance(v, Upload) else v
            return prepare_series(arr, cfg, "the series")
        except DataError as exc:
            raise InputError(422, f"column '{col}': {exc.detail}", col) from None


def _private_tokenizer(cfg: dict) -> tuple[Any, int]:
    """(a copy of the text input's tokenizer, its max_length), or (None, max_length) without offset support.

    A copy, primed once with the settings it will always be called with: Hugging Face fast tokenizers keep
    truncation/padding settings on a shared object, and changing them while another thread (the Collator's)
    tokenises raises "Already borrowed"; a copy whose settings never change can be used from many threads."""
    max_length = int(cfg.get("max_length", 64))
    tok = get_tokenizer(cfg["tokenizer"])
    if not getattr(tok, "is_fast", False):
        return None, max_length
    tok = copy.deepcopy(tok)
    tok(["x"], truncation=True, max_length=max_length, return_offsets_mapping=True)
    return tok, max_length
