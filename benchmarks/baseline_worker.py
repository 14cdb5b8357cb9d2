"""Times `predict` of an older polymodal in its own process, for benchmarks/inference.py's `--baseline REV`.

Run with PYTHONPATH = a checkout of that revision (this file imports nothing from the current tree, so the
older package is the one imported). Loads RUN, reads the rows to predict from CSV, then answers one JSON
line per command on stdin, so that the caller interleaves these calls with its own methods' calls:

  {"cmd": "single", "row": i}  ->  {"s": seconds of predict(rows.iloc[[i]])}
  {"cmd": "batch", "start": s, "rows": n}  ->  {"s": seconds of predict(rows.iloc[s:s + n])}
  {"cmd": "answers", "rows": n} -> {"answers": [...]}   (to check it answers what the current code does)

Usage: PYTHONPATH=<checkout> python benchmarks/baseline_worker.py RUN ROWS_CSV
"""

from __future__ import annotations

import json
import sys
import time

import pandas as pd


def main() -> None:
    run, rows_csv = sys.argv[1], sys.argv[2]
    from polymodal.runs import load_run  # the older package: PYTHONPATH points at its checkout

    p = load_run(run)
    rows = pd.read_csv(rows_csv)
    p.predict(rows.head(1))  # warm-up: tokenizer, allocator, first-call paths (as the caller's methods get)
    p.predict(rows.head(32))
    print(json.dumps({"ready": True, "polymodal": sys.modules["polymodal"].__file__}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "answers":
            print(json.dumps({"answers": [str(a) for a in p.predict(rows.head(cmd["rows"]))]}), flush=True)
            continue
        df = rows.iloc[[cmd["row"]]] if cmd["cmd"] == "single" else rows.iloc[cmd["start"]:cmd["start"] + cmd["rows"]]
        t = time.perf_counter()
        p.predict(df)
        print(json.dumps({"s": time.perf_counter() - t}), flush=True)


if __name__ == "__main__":
    main()
