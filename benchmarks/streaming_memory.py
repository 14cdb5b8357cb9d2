"""Peak memory of a streaming fit (`polymodal fit SHARDS --stream`) at two table sizes (issue 10).

Writes N synthetic rows to Parquet shards (image paths to a few small PNGs reused, a caption from a small
pool, two numbers, a category, a label that depends on them), then trains in a fresh process per size with
`MultimodalPredictor(...).fit(shards, stream=True)` and reports that process's peak resident set
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`) and its RSS after imports and encoder loading, before the fit.
A flat peak across sizes shows memory is bounded by the chunk and the model, not by the table.
`--in-memory` also runs the ordinary fit on the same rows (one table read whole) for contrast.

Default encoders (EfficientNet-Lite0, MiniLM-L6; both frozen, so their features are cached): the few
distinct images and captions are encoded once, so the run measures the streaming pipeline, not encoding.

  nice -n 10 .venv/bin/python benchmarks/streaming_memory.py --rows 20000,200000 --epochs 1
  .venv/bin/python benchmarks/streaming_memory.py --rows 20000 --in-memory       # contrast
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

SHARD_ROWS = 20_000
COLORS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "grey": (128, 128, 128)}


def write_shards(folder: Path, rows: int, seed: int = 0) -> str:
    """`rows` rows in Parquet shards of SHARD_ROWS, generated shard by shard (never the whole table)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "imgs").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, rgb in COLORS.items():
        arr = np.clip(np.array(rgb) + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / "imgs" / f"{name}.png")
    words = ["bright", "dark", "small", "large", "round", "square", "shiny", "matte"]
    captions = [f"a {a} {b} thing" for a in words for b in words]  # 64 distinct captions
    names = list(COLORS)
    for s, start in enumerate(range(0, rows, SHARD_ROWS)):
        n = min(SHARD_ROWS, rows - start)
        color = rng.integers(len(names), size=n)
        x = rng.normal(size=n)
        df = pd.DataFrame({"image": [f"imgs/{names[c]}.png" for c in color],
                           "caption": [captions[i] for i in rng.integers(len(captions), size=n)],
                           "x": x, "y": rng.normal(size=n), "shop": rng.choice(list("abcdef"), size=n),
                           "label": np.where((color % 2 == 0) ^ (x > 1.0), "yes", "no")})
        df.to_parquet(folder / f"part-{s:04d}.parquet", index=False)
    return str(folder / "part-*.parquet")


def rss_kib() -> int:
    """Current resident set (KiB) from /proc; ru_maxrss only gives the peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def child(args) -> None:
    """One fit in this process; prints a JSON line with its peak RSS."""
    import torch

    from polymodal import MultimodalPredictor
    from polymodal.encoders import build_encoder

    torch.set_num_threads(args.threads)
    build_encoder("image"), build_encoder("text")  # loaded once so "before" includes the encoders' weights
    before = rss_kib()
    p = MultimodalPredictor(label="label", verbose=args.verbose, max_epochs=args.epochs, batch_size=args.batch_size,
                            patience=args.epochs, progress=False, cache_dir=args.cache)
    t0 = time.time()
    if args.mode == "stream":
        p.fit(args.data, stream=True, chunk_rows=args.chunk_rows)
    else:
        from polymodal.data.readers import read_table

        files = sorted(Path(args.data).parent.glob("part-*.parquet"))
        table = pd.concat([read_table(f) for f in files], ignore_index=True)
        table.attrs.update(source=str(files[0]), base_dir=str(files[0].parent))
        p.fit(table)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"mode": args.mode, "rss_before_fit_mib": round(before / 1024, 1),
                      "peak_rss_mib": round(peak / 1024, 1), "fit_s": round(time.time() - t0, 1),
                      "valid_accuracy": round(p.metrics["valid"]["accuracy"], 4)}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="20000,200000", help="table sizes, comma-separated")
    ap.add_argument("--chunk-rows", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--in-memory", action="store_true", help="also run the ordinary in-memory fit")
    ap.add_argument("--work", default=None, help="folder for shards and the feature cache (default: a temp dir)")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--child", choices=["stream", "memory"], dest="mode", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        return child(args)
    work = Path(args.work or tempfile.mkdtemp(prefix="polymodal-stream-bench-"))
    results = []
    for n in [int(r) for r in args.rows.split(",")]:
        t0 = time.time()
        data = write_shards(work / f"rows{n}", n)
        cache = work / f"rows{n}" / "cache"  # its own feature cache: every size computes its features
        shards = len(list((work / f"rows{n}").glob("part-*.parquet")))
        print(f"{n} rows: {shards} shards written in {time.time() - t0:.1f}s", flush=True)
        for mode in ["stream"] + (["memory"] if args.in_memory else []):
            cmd = [sys.executable, __file__, "--child", mode, "--data", data, "--cache", str(cache),
                   "--chunk-rows", str(args.chunk_rows), "--epochs", str(args.epochs),
                   "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
            cmd += ["--verbose"] if args.verbose else []
            out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True,
                                 env={**os.environ, "POLYMODAL_CACHE": str(cache.parent)}).stdout
            if args.verbose:
                print(out, flush=True)
            line = [ln for ln in out.splitlines() if ln.startswith("{")]
            res = {"rows": n, "shards": shards, "chunk_rows": args.chunk_rows, **(json.loads(line[-1]) if line else {})}
            print(json.dumps(res), flush=True)
            results.append(res)
    print("\n| rows | mode | chunk rows | RSS before fit (MiB) | peak RSS (MiB) | fit (s) | valid accuracy |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['rows']:,} | {r.get('mode')} | {r['chunk_rows']:,} | {r.get('rss_before_fit_mib')} | "
              f"{r.get('peak_rss_mib')} | {r.get('fit_s')} | {r.get('valid_accuracy')} |")


if __name__ == "__main__":
    main()
