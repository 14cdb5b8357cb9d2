"""Option strings of the CLI turned into settings: name=value lists, the encoder flags, `--finetune`; help texts
shared by commands or too long for cli.py; and the metrics table every command prints. Kept apart so `cli.py`
stays a list of commands."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from polymodal.errors import PolymodalError

GROUP_HELP = ("rows sharing a value of COL stay on one side of the validation split (a patient, an image with "
              "several questions); default: group by an image/audio/video column whose values repeat across rows "
              "(the log says so); 'none': split by row. A numeric/categorical COL is not used as a feature")
LABEL_GROUPS = typer.Option(
    None, help="a training-only column that groups the label's classes (e.g. closed/open answers, a coarse "
               "category): a group classifier and a head per group, p(class) = p(group) p(class | group); each "
               "class goes to the group its training rows have most often. Not an input, not needed to predict")


def parse_kv(spec: str | None) -> dict[str, str]:
    if not spec:
        return {}
    try:
        return dict(p.split("=", 1) for p in spec.split(",") if p.strip())
    except ValueError:
        raise PolymodalError(f"expected name=value[,name=value...], got {spec!r}") from None


def encoder_settings(image: str | None = None, text: str | None = None, audio: str | None = None,
                     video: str | None = None, timeseries: str | None = None, image_size: int | None = None,
                     video_opts: dict | None = None) -> tuple[dict[str, str], dict[str, dict]]:
    """(modality → encoder name, modality → builder options) from the CLI's encoder flags."""
    names = {k: v for k, v in {"image": image, "text": text, "audio": audio, "video": video,
                               "timeseries": timeseries}.items() if v}
    opts: dict[str, dict] = {"image": {"image_size": image_size}} if image_size else {}
    video = {k: v for k, v in (video_opts or {}).items() if v is not None}
    if image_size and video:
        video.setdefault("image_size", image_size)
    if video:
        opts["video"] = video
    return names, opts


def finetune_settings(spec: str | None) -> tuple[dict[str, bool], dict[str, dict]]:
    """`--finetune` → (modality → False for encoders that train, modality → builder options).

    `image` / `text` / `video`: the whole encoder; `image:top=K`, `text:top=K`: its last K blocks or layers over
    a cached prefix; `text:lora` (`text:lora=R`, rank R, default 8): LoRA adapters; `text:bitfit`: biases only;
    `image:llrd=D`, `text:llrd=D` (with top=K): layer-wise learning-rate decay D over that top.
    """
    frozen: dict[str, bool] = {}
    opts: dict[str, dict] = {}
    usage = ("write MODALITY (the whole encoder), image:top=K / text:top=K (the last K blocks or layers), "
             "text:lora[=RANK], text:bitfit, or image:llrd=D / text:llrd=D with top=K (0 < D <= 1)")
    for item in (m.strip() for m in (spec or "").split(",")):
        mod, _, opt = item.partition(":")
        key, _, value = opt.partition("=")
        if not opt:
            if mod:
                frozen[mod] = False
        elif key == "top" and value.isdigit() and int(value) >= 1 and mod in ("image", "text"):
            opts.setdefault(mod, {})["train_top"] = int(value)
        elif key == "lora" and mod == "text" and (not value or value.isdigit() and int(value) >= 1):
            frozen[mod] = False
            opts.setdefault(mod, {}).update(adapter="lora", lora_rank=int(value or 8))
        elif key == "llrd" and mod in ("image", "text") and _fraction(value):
            opts.setdefault(mod, {})["layer_decay"] = float(value)
        elif key == "bitfit" and mod == "text" and not value:
            frozen[mod] = False
            opts.setdefault(mod, {})["adapter"] = "bitfit"
        else:
            raise PolymodalError(f"--finetune {item!r}: {usage}")
    for mod, o in opts.items():
        if "train_top" in o and "adapter" in o:
            raise PolymodalError(f"--finetune: choose one of top=K and {o['adapter']} for {mod}")
        if "layer_decay" in o and "train_top" not in o:
            raise PolymodalError(f"--finetune {mod}:llrd needs {mod}:top=K (the layers the decay steps over)")
    return frozen, opts


def _fraction(value: str) -> bool:
    try:
        return 0 < float(value) <= 1
    except ValueError:
        return False


def print_metrics(metrics: dict, title: str) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        if isinstance(v, float):
            table.add_row(k, f"{v:.4f}")
        elif isinstance(v, (int, str)):
            table.add_row(k, str(v))
    Console().print(table)
