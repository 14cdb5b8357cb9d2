"""Mean ± std over seeds of benchmarks/compress_vqa_rad.py's tables (one per original run seed).

python benchmarks/compress_summary.py [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
from io import StringIO
from pathlib import Path

import pandas as pd

RESULTS = Path(__file__).parent / "results"
COLUMNS = ["size ×", "speed-up b1 ×", "speed-up b32 ×", "test acc (%)", "Δ acc (points)", "test agreement"]


def read_table(path: Path) -> pd.DataFrame:
    """The first Markdown table of a results file (as write_markdown writes it)."""
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("|")]
    lines = [ln for i, ln in enumerate(lines) if i != 1]  # drop the |:---| rule
    df = pd.read_csv(StringIO("\n".join(ln.strip().strip("|") for ln in lines)), sep="|", skipinitialspace=True)
    df.columns = [c.strip() for c in df.columns]
    df["model"] = df["model"].str.strip()
    return df


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args()
    frames = []
    for s in (int(x) for x in args.seeds.split(",")):
        f = RESULTS / ("compress_vqa_rad.md" if s == 0 else f"compress_vqa_rad_seed{s}.md")
        frames.append(read_table(f).assign(seed=s))
    df = pd.concat(frames)
    cols = [c for c in COLUMNS if c in df.columns]
    g = df.groupby("model", sort=False)[cols]
    mean, std = g.mean(), g.std()
    out = mean.copy().astype(object)
    for c in cols:
        digits = 3 if c == "test agreement" else 2
        out[c] = [f"{m:.{digits}f} ± {s:.{digits}f}" for m, s in zip(mean[c], std[c])]
    print(f"{len(frames)} seeds ({args.seeds}); mean ± std\n")
    print(out.reset_index().to_markdown(index=False))


if __name__ == "__main__":
    main()
