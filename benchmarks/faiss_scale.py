"""FAISS index speed and recall on a synthetic clustered gallery: exact (flat) vs IVF-Flat vs HNSW.

Gallery: N vectors (default 1,000,000 x 256, float32, ~1 GB) from a Gaussian mixture, so neighbours are
structured and approximate search is meaningful; 1,000 queries from the same mixture. For each index: build
time, query time per query (batched search of all queries, divided by their number) and recall@k against exact
search (mean |approx top-k ∩ exact top-k| / k), all through polymodal's VectorIndex (cosine similarity).

    python benchmarks/faiss_scale.py                  # 1M vectors; about 10 minutes on 2 cores
    python benchmarks/faiss_scale.py --n 100000       # quick
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import time
from pathlib import Path

import faiss
import numpy as np
from common import emit

from polymodal.retrieval.index import VectorIndex


def mixture(n: int, d: int, centers: np.ndarray, sigma: float, rng: np.random.Generator,
            block: int = 200_000) -> np.ndarray:
    """Points around random centres, generated block by block in float32 to keep peak memory near the output."""
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, block):
        stop = min(start + block, n)
        out[start:stop] = centers[rng.integers(0, len(centers), stop - start)]
        out[start:stop] += sigma * rng.standard_normal((stop - start, d), dtype=np.float32)
    return out


def recall(approx: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a).intersection(e)) for a, e in zip(approx, exact, strict=True)]) / exact.shape[1])


def timed_search(index: VectorIndex, queries: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    _, rows = index.search_rows(queries, k)
    return (time.perf_counter() - t0) * 1000 / len(queries), rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--centers", type=int, default=2000)
    p.add_argument("--sigma", type=float, default=1.0, help="noise scale around unit-variance centres")
    p.add_argument("--nprobe", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--ivf-train-size", type=int, default=None, help="default: VectorIndex's, 50 * nlist")
    p.add_argument("--hnsw-m", type=int, default=16)
    p.add_argument("--ef-construction", type=int, default=40)
    p.add_argument("--ef-search", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "faiss_scale.md")
    args = p.parse_args()

    t_start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    centers = rng.standard_normal((args.centers, args.d), dtype=np.float32)
    gallery = mixture(args.n, args.d, centers, args.sigma, rng)
    queries = mixture(args.queries, args.d, centers, args.sigma, rng)
    print(f"data: {args.n} x {args.d} ({gallery.nbytes / 2**30:.2f} GiB) in {time.perf_counter() - t_start:.1f} s",
          flush=True)
    rows = []

    t0 = time.perf_counter()
    flat = VectorIndex.build(gallery, model_id="synthetic", kind="flat")
    build = time.perf_counter() - t0
    ms, exact = timed_search(flat, queries, args.k)
    rows.append(("flat (exact)", "", build, ms, 1.0))
    print(rows[-1], flush=True)
    del flat
    gc.collect()

    t0 = time.perf_counter()
    ivf = VectorIndex.build(gallery, model_id="synthetic", kind="ivf", train_size=args.ivf_train_size)
    build = time.perf_counter() - t0
    for nprobe in args.nprobe:
        ivf.set_search_params(nprobe=nprobe)
        ms, approx = timed_search(ivf, queries, args.k)
        rows.append((f"IVF-Flat (nlist {ivf.params['nlist']}, train {ivf.params['train_size']})",
                     f"nprobe={nprobe}", build, ms, recall(approx, exact)))
        print(rows[-1], flush=True)
    # The index's own check (reconstructs the stored vectors, exact search block by block) must agree.
    own = ivf.recall_against_exact(queries, args.k)
    assert abs(own - rows[-1][4]) < 1e-9, (own, rows[-1][4])
    del ivf
    gc.collect()

    t0 = time.perf_counter()
    hnsw = VectorIndex.build(gallery, model_id="synthetic", kind="hnsw", hnsw_m=args.hnsw_m,
                             ef_construction=args.ef_construction)
    build = time.perf_counter() - t0
    for ef in args.ef_search:
        hnsw.set_search_params(ef_search=ef)
        ms, approx = timed_search(hnsw, queries, args.k)
        rows.append((f"HNSW (M {args.hnsw_m}, efConstruction {args.ef_construction})", f"efSearch={ef}", build,
                     ms, recall(approx, exact)))
        print(rows[-1], flush=True)
    del hnsw
    total = time.perf_counter() - t_start

    lines = [
        f"# FAISS: exact vs approximate search, {args.n:,} x {args.d} synthetic clustered gallery",
        "",
        f"Gaussian mixture ({args.centers} centres, noise sigma {args.sigma}), {args.queries} queries from the same "
        f"mixture, cosine similarity, recall@{args.k} = mean |approx top-{args.k} ∩ exact top-{args.k}| / {args.k}. "
        f"Query time = one batched search of all queries / {args.queries}. Machine: {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.machine()}), faiss {faiss.__version__}, "
        f"{faiss.omp_get_max_threads()} OpenMP threads. Total run {total:.0f} s.",
        "",
        f"| index | search setting | build (s) | query (ms/query) | recall@{args.k} vs exact |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {name} | {setting} | {build:.1f} | {ms:.3f} | {rec:.4f} |"
              for name, setting, build, ms, rec in rows]
    lines += ["", "Command: `python benchmarks/faiss_scale.py" + ("" if args.n == 1_000_000 else f" --n {args.n}")
              + "`"]
    emit("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
