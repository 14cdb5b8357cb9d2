"""CPU inference speed of `predict` per engine, against a hand-written loop of the same engine (issue 20).

The model is the `polymodal demo` one (easy-vqa: EfficientNet-Lite0 at 128 px + MiniLM-L6, frozen, concat
fusion, MLP head), fitted here on a few easy-vqa images (speed does not depend on how well it learned).

Rows, all in one process, rounds of each method interleaved so that load from other processes hits all alike:
  single row   `p.predict(one_row_df, engine=E)` on test rows in turn: median and p90 latency over --calls calls.
  batch 32     `p.predict(df_32_rows, engine=E)`: rows/s, median over --rounds rounds.
  hand loop    the same work written plainly for the same engine: PIL decode + resize + normalise, the HF
               tokenizer, one forward (`model(batch)` under inference_mode, or `session.run`), softmax,
               argmax, class names; the same thread settings polymodal uses (torch: 1 intra-op thread for
               <= 8 rows, its default otherwise; onnxruntime: the engine's session). Its answers are checked
               to equal predict's. `hand+series/onnx`: the onnxruntime loop also wrapping its labels in a
               Series on the input's index, as predict returns them (informational, not the target).
  baseline     `predict` of the code as it was when issue 20 was filed (--baseline REV, default fec14d9: main
               just before the issue's first commit; PyTorch eager, its own thread settings), in its own
               process (benchmarks/baseline_worker.py, PYTHONPATH = `git archive REV` unpacked under the work
               folder) on a copy of the same run folder; its calls interleave with the others', it times itself.
Each single-row call and batch round runs the methods in a rotated order (call i starts with method i mod n),
so that none always follows the same one (a method run right after the same session's other caller meets
warm caches: measured 0.81x vs 0.83x for predict vs its hand loop, fixed vs rotated order).
Targets (issue 20): single-row predict < 15 ms median; predict >= 0.95x the hand loop of its engine;
batch-32 throughput >= 4x today's (today = the baseline's predict; also reported: vs the current PyTorch
engine's predict, which this issue's per-call work made faster too).

  python benchmarks/inference.py --out benchmarks/results/inference.json

--int8 adds the opt-in int8 graph (`polymodal compress RUN --quantize int8`, its own run folder, never chosen by
`auto`) as `predict/onnx-int8`, with its answer agreement with the float graph on the --test-images rows.

--serve instead runs benchmarks/serve_load.py's model and client against `polymodal serve` per engine, with
micro-batching on and off: one server per setting, phases interleaved over --serve-rounds rounds (each client
count, each setting in turn), per-phase mean batch from /metrics, medians over the rounds in the output:

  python benchmarks/inference.py --serve --engines onnx --batching on,off --seconds 8 --serve-rounds 3 \
      --serve-out inference_serve_adaptive.json

--encode N instead times the feature cache's encoder pass per engine (PyTorch, onnxruntime with its export,
onnxruntime with the graph cached) on N easy-vqa test images and their questions:

  python benchmarks/inference.py --encode 256   # writes results/inference_encode.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import WORK  # noqa: E402
from polymodal.compress.engine import OnnxModule, ort_session, ort_threads  # noqa: E402
from polymodal.data.text import get_tokenizer  # noqa: E402
from polymodal.demo import easy_vqa_table  # noqa: E402
from polymodal.predictor import MultimodalPredictor  # noqa: E402
from polymodal.runs import load_run  # noqa: E402
from polymodal.types import IMAGE, TEXT  # noqa: E402

ENGINES = ("torch", "onnx")


def demo_run(folder: Path, train_images: int, refit: bool) -> Path:
    """The demo's model (its encoders, image size and head; fewer images and epochs), fitted once into `folder`."""
    if refit and folder.exists():
        shutil.rmtree(folder)
    if not (folder / "config.json").exists():
        data = folder.parent / "inference-data"
        data.mkdir(parents=True, exist_ok=True)
        easy_vqa_table("train", train_images).to_csv(data / "train.csv", index=False)
        MultimodalPredictor(label="answer", path=folder, encoder_opts={"image": {"image_size": 128}},
                            max_epochs=2, batch_size=128, lr=2e-3, patience=4, verbose=False,
                            progress=False).fit(data / "train.csv")
    return folder


def int8_run(run: Path, train_csv: Path, refit: bool) -> Path:
    """The opt-in int8 graph of `run`: `polymodal compress RUN --quantize int8 --train TRAIN` (onnxruntime static
    QDQ convolutions chosen by its sensitivity sweep, dynamic int8 transformer MatMuls), made once beside it.
    Never what `auto` picks: it answers a little differently, so its agreement with the float answers is
    recorded with its speed."""
    from polymodal.compress.pipeline import compress_run

    out = run.with_name(run.name + "-int8")
    if refit and out.exists():
        shutil.rmtree(out)
    if not (out / "config.json").exists() and not any(out.glob("*.onnx")):
        compress_run(run, out, train=str(train_csv), quantize="int8", report=False)
    return out


BASELINE = "fec14d9"  # main just before issue 20's first commit (7a3d8ed): "today's" predict in its target


class BaselineWorker:
    """`predict` of polymodal at revision `rev`, in a process of its own (benchmarks/baseline_worker.py) on a copy
    of `run` (the older code must not write into the current run folder), answering timing commands."""

    def __init__(self, rev: str, run: Path, rows: pd.DataFrame) -> None:
        repo = Path(__file__).resolve().parents[1]
        sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=repo, capture_output=True, text=True,
                             check=True).stdout.strip()
        src = WORK / f"baseline-{sha}"
        if not (src / "polymodal" / "__init__.py").exists():
            src.mkdir(parents=True, exist_ok=True)
            archive = subprocess.run(["git", "archive", sha], cwd=repo, capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
        copy = WORK / f"baseline-{sha}-run"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns("onnx"))
        csv = WORK / "baseline-rows.csv"
        rows.to_csv(csv, index=False)
        self.rev = sha
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("baseline_worker.py")), str(copy),
                                      str(csv)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONPATH": str(src)})
        ready = json.loads(self.proc.stdout.readline())
        assert ready.get("polymodal", "").startswith(str(src)), ready  # the older package, not this tree's
        self.rows = rows

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def seconds(self, df: pd.DataFrame) -> float:
        """The worker's own time for predict on the same rows as `df` (consecutive rows of the table it was
        given, whose index values `df` keeps)."""
        start = int(np.flatnonzero(self.rows.index == df.index[0])[0])
        if len(df) == 1:
            return self.ask(cmd="single", row=start)["s"]
        return self.ask(cmd="batch", start=start, rows=len(df))["s"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


class HandLoop:
    """The same prediction written plainly: decode, tokenise, one forward, softmax, argmax."""

    def __init__(self, p, engine: str) -> None:
        self.p, self.engine, self.classes = p, engine, list(p.task.classes)
        self.images = [(k, s.config) for k, s in p.prep.inputs.items() if s.modality == IMAGE]
        self.texts = [(k, s.config) for k, s in p.prep.inputs.items() if s.modality == TEXT]
        self.tok = {k: get_tokenizer(c["tokenizer"]) for k, c in self.texts}
        self.model = p.model.eval()
        if engine == "onnx":
            module = p.inference_module("onnx")
            assert isinstance(module, OnnxModule)
            self.session = module.session

    def inputs(self, df: pd.DataFrame) -> dict:
        out = {}
        for key, cfg in self.images:
            arrs = []
            mean, std = np.asarray(cfg["mean"], np.float32), np.asarray(cfg["std"], np.float32)
            for path in df[key]:
                with Image.open(path) as im:
                    im = im.convert("RGB").resize((cfg["image_size"],) * 2, Image.BILINEAR)
                arr = (np.asarray(im, dtype=np.float32) / 255.0 - mean) / std
                arrs.append(arr.transpose(2, 0, 1))
            out[key] = np.ascontiguousarray(np.stack(arrs))
        for key, cfg in self.texts:
            enc = self.tok[key](list(df[key]), padding=True, truncation=True, max_length=cfg.get("max_length", 64),
                                return_tensors="np")
            out[f"{key}__input_ids"], out[f"{key}__attention_mask"] = enc["input_ids"], enc["attention_mask"]
        return out

    def flags(self, n: int) -> dict[str, np.ndarray]:
        """The graph's other inputs: every input present, each row its own image (index 0..n-1)."""
        return {**{f"present__{k}": np.ones(n, dtype=bool) for k, _ in self.images + self.texts},
                **{f"{k}__index": np.arange(n, dtype=np.int64) for k, _ in self.images}}

    def probs(self, df: pd.DataFrame) -> np.ndarray:
        x = self.inputs(df)
        n = len(df)
        if self.engine == "onnx":
            feeds = {**x, **self.flags(n)}
            logits = self.session.run(["logits"], feeds)[0]
        else:
            batch = {"inputs": {k: torch.from_numpy(x[k]) for k, _ in self.images}, "features": {},
                     "present": {k: torch.ones(n, dtype=torch.bool) for k, _ in self.images + self.texts}}
            for k, _ in self.texts:
                batch["inputs"][k] = {p: torch.from_numpy(x[f"{k}__{p}"]) for p in ("input_ids", "attention_mask")}
            threads = torch.get_num_threads()
            torch.set_num_threads(1 if n <= 8 else threads)  # what polymodal's loop does (pipeline.run_inference)
            try:
                with torch.inference_mode():
                    logits = self.model(batch).numpy()
            finally:
                torch.set_num_threads(threads)
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def predict(self, df: pd.DataFrame) -> list[str]:
        return [self.classes[i] for i in self.probs(df).argmax(1)]


def batch_breakdown(hand: HandLoop, batch: pd.DataFrame, rounds: int, sessions: dict) -> dict:
    """Where a batch's time goes in the plain onnxruntime loop: image decode + resize + normalise, tokenising,
    and session.run alone (per graph: the float one, and any in `sessions`), medians over `rounds`
    interleaved; `session_only_rows_per_s` is the most any predict could reach with free preprocessing."""
    images = [(k, c) for k, c in hand.images]
    texts, n = hand.texts, len(batch)
    feeds = {**hand.inputs(batch), **hand.flags(n)}
    graphs = {"onnx": hand.session, **sessions}
    parts: dict[str, list[float]] = {"images": [], "text": [], **{f"session_run/{g}": [] for g in graphs}}
    for _ in range(rounds):
        hand.images, hand.texts = images, []
        parts["images"].append(timed(lambda: hand.inputs(batch)))
        hand.images, hand.texts = [], texts
        parts["text"].append(timed(lambda: hand.inputs(batch)))
        hand.images = images
        for g, sess in graphs.items():
            parts[f"session_run/{g}"].append(timed(lambda sess=sess: sess.run(["logits"], feeds)))
    out = {"rows": n, **{k: round(statistics.median(v) * 1000, 1) for k, v in parts.items()}}
    out["unit"] = "ms per batch"
    for g in graphs:
        out[f"session_only_rows_per_s/{g}"] = round(n / (out[f"session_run/{g}"] / 1000), 1)
    return out


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def summary_ms(times: list[float]) -> dict:
    ms = np.asarray(times) * 1000
    return {"median_ms": round(float(np.median(ms)), 2), "p90_ms": round(float(np.percentile(ms, 90)), 2),
            "calls": len(ms)}


def serve_phases(seconds: float, out: Path, engines: list[str], waits: list[float], batching_modes: list[bool],
                 rounds: int = 2, clients_list: tuple[int, ...] = (1, 8, 64), requests: int = 0) -> None:
    """`polymodal serve` at 1/8/64 clients, micro-batching on (per --max-wait-ms) and off, per engine
    (POLYMODAL_ENGINE in the server's environment), with benchmarks/serve_load.py's model, client and phases.

    One server per setting, all started up front; the phases are interleaved (for each round, each client
    count, each setting in turn), so that load from other processes drifts over every setting alike. Each
    row's mean batch is that phase's own (from /metrics before and after it). `requests`: per phase (0:
    serve_load.py's, 80 at 1 client: ~1.6 s, too few to tell settings 10 % apart)."""
    import asyncio

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import serve_load as S  # the load test's server start, client and /metrics reading

    root = WORK / "serve_load"
    run = S.make_run(root, "efficientnet-lite0")
    image = (root / "imgs" / "0.png").read_bytes()
    # a setting named twice (e.g. --batching on,off,off) runs twice, in servers of its own: an A/A control
    # that shows how far two identical servers differ on this machine
    settings: list[tuple] = []
    for e in engines:
        for b in batching_modes:
            for w in (waits if b else [0.0]):
                settings.append((e, b, w, sum(x[:3] == (e, b, w) for x in settings)))
    servers: dict[tuple, tuple[int, subprocess.Popen]] = {}
    rows = []
    try:
        for engine, batching, wait, replica in settings:
            os.environ["POLYMODAL_ENGINE"] = engine  # inherited by the server subprocess
            port = S.free_port()
            servers[(engine, batching, wait, replica)] = (port, S.start_server(run, port, batching, wait,
                                                                               timeout=180))
        for r in range(rounds):
            for clients in clients_list:
                # the order of the settings alternates by round (ABBA): whichever runs first after a heavy phase
                # (or the server's start) meets the machine's leftovers; over rounds each setting does alike
                order = list(servers.items())
                for (engine, batching, wait, replica), (port, _) in (order if r % 2 == 0 else order[::-1]):
                    row = {"round": r, "engine": engine, "batching": batching, "max_wait_ms": wait,
                           "replica": replica, "clients": clients}
                    before, waits_before = S.batch_counts(port), company_waits(port)
                    res = asyncio.run(S.load(f"http://127.0.0.1:{port}/predict", image, clients,
                                             requests or S.REQUESTS[clients], seconds))
                    after, waits_after = S.batch_counts(port), company_waits(port)
                    forwards = after[1] - before[1]
                    row.update({k: round(v, 2) for k, v in res.items()},
                               mean_batch=round((after[0] - before[0]) / max(forwards, 1), 2),
                               company_waits=int(waits_after[0] - waits_before[0]),
                               company_wait_ms=round((waits_after[1] - waits_before[1]) * 1000, 1),
                               online_checks=int(waits_after[2] - waits_before[2]),
                               checks_kept_batching=int(waits_after[3] - waits_before[3]),
                               load_avg_1min=round(os.getloadavg()[0], 2))
                    rows.append(row)
                    print(row, flush=True)
    finally:
        for _, proc in servers.values():
            proc.terminate()
        for _, proc in servers.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # still draining queued requests
                proc.kill()
                proc.wait()
    summary = []
    for (engine, batching, wait, replica) in servers:
        for clients in clients_list:
            mine = [x for x in rows if (x["engine"], x["batching"], x["max_wait_ms"], x["replica"], x["clients"])
                    == (engine, batching, wait, replica, clients)]
            summary.append({"engine": engine, "batching": batching, "max_wait_ms": wait, "replica": replica,
                            "clients": clients,
                            **{k: round(statistics.median(x[k] for x in mine), 2)
                               for k in ("throughput_rps", "p50_ms", "p99_ms", "mean_batch")},
                            "errors": sum(x["errors"] for x in mine), "rounds": len(mine)})
    out.write_text(json.dumps({"command": "python benchmarks/inference.py " + " ".join(sys.argv[1:]),
                               "summary (medians over rounds)": summary, "rows": rows}, indent=1) + "\n")
    for x in summary:
        print(x)


def company_waits(port: int) -> tuple[float, float, float, float]:
    """(forwards held back for company, seconds held, online checks, checks that kept batching) so far, from
    the server's /metrics."""
    import httpx

    vals = {line.split(" ")[0]: float(line.split(" ")[1]) for line in
            httpx.get(f"http://127.0.0.1:{port}/metrics").text.splitlines() if line.startswith("polymodal_batch_c")}
    return (vals.get("polymodal_batch_company_waits_total", 0.0),
            vals.get("polymodal_batch_company_wait_seconds_total", 0.0), vals.get("polymodal_batch_checks_total", 0.0),
            vals.get("polymodal_batch_checks_kept_batching_total", 0.0))


def encode_phases(run: Path, values: int, out: Path) -> None:
    """The feature cache's encoder pass (`encoders.cache.encode_values`) over `values` easy-vqa test images and
    their unique questions, per frozen encoder of the demo model: PyTorch, onnxruntime's first pass (export +
    check on the first batch) and onnxruntime with the graph cached; max |diff| vs PyTorch."""
    import tempfile

    from polymodal.encoders import onnx_runner
    from polymodal.encoders.cache import encode_values

    p = load_run(run)
    df = easy_vqa_table("test", values)
    rows = {}
    for key, enc in p.model.encoders.items():
        spec = p.prep.inputs[key]
        if spec.modality not in (IMAGE, TEXT):
            continue
        vals = sorted({str(v) for v in df[spec.columns[0]]})[:values]
        with tempfile.TemporaryDirectory(prefix="polymodal-encode-") as tmp:
            times, feats = {}, {}
            for name, engine in (("torch", "torch"), ("onnx_first_pass_with_export", "onnx"),
                                 ("onnx_graph_cached", "onnx")):
                t = time.perf_counter()
                feats[name], _ = encode_values(enc, spec, vals, 64, engine=engine, graph_dir=Path(tmp))
                times[name] = round(time.perf_counter() - t, 2)
            report = json.loads((Path(tmp) / onnx_runner.PARITY).read_text())
        rows[key] = {"modality": spec.modality, "values": len(vals), "seconds": times,
                     "speedup_cached": round(times["torch"] / times["onnx_graph_cached"], 2),
                     "max_abs_diff": float(np.abs(feats["onnx_graph_cached"] - feats["torch"]).max()),
                     "check_passed": report["passed"]}
        print(key, rows[key], flush=True)
    out.write_text(json.dumps({"command": "python benchmarks/inference.py " + " ".join(sys.argv[1:]),
                               "load_avg_1min_end": round(os.getloadavg()[0], 2), "encoders": rows}, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-images", type=int, default=60)
    ap.add_argument("--test-images", type=int, default=20)
    ap.add_argument("--calls", type=int, default=40, help="single-row calls per method (>= 30)")
    ap.add_argument("--rounds", type=int, default=7, help="batch-32 rounds per method")
    ap.add_argument("--refit", action="store_true", help="fit the model again (default: reuse the work folder)")
    ap.add_argument("--int8", action="store_true",
                    help="also the opt-in int8 graph (`polymodal compress --quantize int8`, made once), with its "
                         "answer agreement with the float graph on the test rows")
    ap.add_argument("--baseline", default=BASELINE,
                    help="git revision whose predict is 'today's' (own process, interleaved); 'none' skips it")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/inference.json"))
    ap.add_argument("--serve", action="store_true", help="instead: serve_load.py's phases per engine")
    ap.add_argument("--seconds", type=float, default=20.0, help="--serve: time budget per phase")
    ap.add_argument("--engines", default="torch,onnx", help="--serve: engines to serve with")
    ap.add_argument("--max-wait-ms", default="5", help="--serve: comma list of batching waits")
    ap.add_argument("--batching", default="on,off", help="--serve: on, off or both")
    ap.add_argument("--serve-out", default="inference_serve.json",
                    help="--serve: output file (a bare name goes beside --out)")
    ap.add_argument("--serve-rounds", type=int, default=2, help="--serve: interleaved rounds of every phase")
    ap.add_argument("--clients", default="1,8,64", help="--serve: comma list of client counts")
    ap.add_argument("--requests", type=int, default=0,
                    help="--serve: requests per phase (default: serve_load.py's per client count)")
    ap.add_argument("--encode", type=int, default=0,
                    help="instead: time the feature cache's encoder pass per engine on this many test images "
                         "(written beside --out as inference_encode.json)")
    args = ap.parse_args()
    if args.serve:
        serve_out = Path(args.serve_out)
        serve_out = serve_out if serve_out.parent != Path(".") else args.out.with_name(args.serve_out)
        return serve_phases(args.seconds, serve_out,
                            args.engines.split(","), [float(w) for w in args.max_wait_ms.split(",")],
                            [b == "on" for b in args.batching.split(",")], args.serve_rounds,
                            tuple(int(c) for c in args.clients.split(",")), args.requests)

    run = demo_run(WORK / "inference-run", args.train_images, args.refit)
    if args.encode:
        return encode_phases(run, args.encode, args.out.with_name("inference_encode.json"))
    test = easy_vqa_table("test", args.test_images)
    shutil.rmtree(run / "onnx", ignore_errors=True)  # export timed below, as a user's first predict meets it
    t0 = time.perf_counter()
    p = load_run(run)
    load_s = time.perf_counter() - t0
    first_s = timed(lambda: p.predict(test.head(1)))  # auto: export + parity check + one row
    parity = json.loads((run / "onnx" / "parity.json").read_text())
    graph_mb = (run / "onnx" / "model.onnx").stat().st_size / 2**20

    loops = {e: HandLoop(p, e) for e in ENGINES}
    batch = test.head(32).reset_index(drop=True)  # 32 questions about 5 images (easy-vqa asks several per image)
    # 32 rows with 32 different images: no row shares its image, so nothing is encoded once for several rows
    distinct = easy_vqa_table("test", 32).groupby("image", sort=False).head(1).head(32)
    distinct.index = pd.RangeIndex(len(test), len(test) + len(distinct))
    # the same answers: predict of each engine vs its hand loop vs PyTorch's predict
    reference = p.predict_proba(batch, as_pandas=False, engine="torch")
    checks = {}
    for e in ENGINES:
        got = p.predict_proba(batch, as_pandas=False, engine=e)
        hand = loops[e].probs(batch)
        checks[e] = {"max_abs_diff_vs_torch_predict": float(np.abs(got - reference).max()),
                     "hand_loop_max_abs_diff": float(np.abs(hand - got).max()),
                     "answers_equal_hand_loop": bool(list(p.predict(batch, engine=e)) == loops[e].predict(batch))}
        assert checks[e]["answers_equal_hand_loop"] and checks[e]["hand_loop_max_abs_diff"] < 1e-4, checks[e]

    methods: dict[str, Callable[[pd.DataFrame], object]] = {}
    for e in ENGINES:
        methods[f"predict/{e}"] = lambda df, e=e: p.predict(df, engine=e)
        methods[f"hand/{e}"] = loops[e].predict
    # the hand loop with predict's deliverable, a Series of labels on the input's index: what the Series alone
    # costs right after session.run has flushed the caches (informational; the target is against the list)
    methods["hand+series/onnx"] = lambda df: pd.Series(loops["onnx"].predict(df), index=df.index, name="answer")
    if args.int8:  # the compressed run, opt-in: its own folder, predicted as a user would
        q = load_run(int8_run(run, run.parent / "inference-data" / "train.csv", args.refit))
        # the engine's session settings (threads, no spin-waiting): OnnxPredictor's own session spins by
        # default, and its idle threads then take the cores the next method in this loop needs
        q.session = ort_session(q.path.read_bytes())
        methods["predict/onnx-int8"] = q.predict
        float_answers = list(p.predict(test, engine="onnx"))
        checks["onnx-int8"] = {
            "test_rows": len(test),
            "answer_agreement_vs_float": float(np.mean(np.asarray(list(q.predict(test))) == float_answers)),
            "max_abs_prob_diff_vs_float": float(np.abs(q.predict_proba(test, as_pandas=False)
                                                       - p.predict_proba(test, as_pandas=False, engine="onnx")).max())}
    for fn in methods.values():  # warm-up: tokenizer, allocator, first-call paths
        fn(test.head(1))
        fn(batch)
    clocks = {m: (lambda df, fn=fn: timed(lambda: fn(df))) for m, fn in methods.items()}
    baseline = None
    if args.baseline != "none":  # today's predict, in its own process, timed there (no pipe in its figure)
        baseline = BaselineWorker(args.baseline, run, pd.concat([test, distinct]))
        clocks[f"baseline/{baseline.rev}"] = baseline.seconds
        old_answers = baseline.ask(cmd="answers", rows=len(test))["answers"]
        checks["baseline"] = {"revision": baseline.rev, "answer_agreement_vs_torch_predict": float(np.mean(
            np.asarray(old_answers) == np.asarray(list(p.predict(test, engine="torch")), dtype=str)))}

    def rotated(i: int) -> list[str]:  # call i starts with method i mod n: none always follows the same one
        names = list(clocks)
        return names[i % len(names):] + names[:i % len(names)]

    single: dict[str, list[float]] = {m: [] for m in clocks}
    for i in range(args.calls):
        row = test.iloc[[i % len(test)]]
        for m in rotated(i):
            single[m].append(clocks[m](row))
    rates: dict[str, list[float]] = {m: [] for m in clocks}
    rates_distinct: dict[str, list[float]] = {m: [] for m in clocks}
    for r in range(args.rounds):
        for m in rotated(r):
            rates[m].append(len(batch) / clocks[m](batch))
            rates_distinct[m].append(len(distinct) / clocks[m](distinct))
    if baseline is not None:
        baseline.close()

    results = {m: {"single_row": summary_ms(single[m]),
                   "batch32_rows_per_s": round(statistics.median(rates[m]), 1),
                   "batch32_distinct_images_rows_per_s": round(statistics.median(rates_distinct[m]), 1)}
               for m in clocks}
    breakdown = batch_breakdown(loops["onnx"], batch, args.rounds,
                                {"onnx-int8": q.session} if args.int8 else {})
    ratios = {}
    for e in ENGINES:
        pr, hd = results[f"predict/{e}"], results[f"hand/{e}"]
        ratios[e] = {"single_row_vs_hand": round(hd["single_row"]["median_ms"] / pr["single_row"]["median_ms"], 3),
                     "batch32_vs_hand": round(pr["batch32_rows_per_s"] / hd["batch32_rows_per_s"], 3)}
    ratios["onnx_vs_hand_returning_a_series"] = {
        "single_row": round(results["hand+series/onnx"]["single_row"]["median_ms"]
                            / results["predict/onnx"]["single_row"]["median_ms"], 3),
        "batch32": round(results["predict/onnx"]["batch32_rows_per_s"]
                         / results["hand+series/onnx"]["batch32_rows_per_s"], 3)}
    torch_b32 = results["predict/torch"]["batch32_rows_per_s"]
    best_single = min(results[f"predict/{e}"]["single_row"]["median_ms"] for e in ENGINES)
    if args.int8:
        results["predict/onnx-int8"]["batch32_vs_torch_predict"] = round(
            results["predict/onnx-int8"]["batch32_rows_per_s"] / torch_b32, 2)
    targets = {
        "single_row_median_under_15ms": {"value_ms": best_single, "met": best_single < 15},
        "predict_at_least_0.95x_hand_loop": {
            e: {"single_row": ratios[e]["single_row_vs_hand"], "batch32": ratios[e]["batch32_vs_hand"],
                "met": min(ratios[e].values()) >= 0.95} for e in ENGINES},
        "batch32_vs_torch_predict_now": round(results["predict/onnx"]["batch32_rows_per_s"] / torch_b32, 2),
    }
    if baseline is not None:
        today = results[f"baseline/{baseline.rev}"]
        targets["batch32_at_least_4x_today"] = {
            "today": f"predict at {baseline.rev}", "value": round(
                results["predict/onnx"]["batch32_rows_per_s"] / today["batch32_rows_per_s"], 2),
            "met": results["predict/onnx"]["batch32_rows_per_s"] >= 4 * today["batch32_rows_per_s"]}
        targets["batch32_distinct_images_vs_today"] = round(
            results["predict/onnx"]["batch32_distinct_images_rows_per_s"]
            / today["batch32_distinct_images_rows_per_s"], 2)
        targets["single_row_vs_today"] = round(today["single_row"]["median_ms"] / best_single, 2)
    out = {"command": "python benchmarks/inference.py " + " ".join(sys.argv[1:]),
           "model": "easy-vqa demo model: efficientnet-lite0 128 px + minilm-l6 (frozen), concat, MLP head",
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                       "torch_threads": torch.get_num_threads(), "ort_threads": ort_threads(),
                       "load_avg_1min_end": round(os.getloadavg()[0], 2)},
           "load_run_s": round(load_s, 2), "first_predict_with_export_s": round(first_s, 2),
           "onnx_graph_mb": round(graph_mb, 1), "parity": parity, "answer_checks": checks,
           "results": results, "ratios": ratios, "targets": targets, "batch32_breakdown": breakdown}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: out[k] for k in ("results", "ratios", "targets", "first_predict_with_export_s")}, indent=1))


if __name__ == "__main__":
    main()
