"""Compression on VQA-RAD closed questions: size, CPU latency and accuracy of int8, pruned and distilled models.

python benchmarks/compress_vqa_rad.py [--run benchmarks/.work/vqa_rad_0] [--threads 1]

The original is EfficientNet-Lite0 (224 px) + MiniLM-L6, frozen, concat fusion (benchmarks/vqa_rad.py, seed 0;
trained here when its run folder is missing). Every variant is measured in this one process, one after
the other on the same inputs, so the ratios are comparable even on a loaded machine.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch
from common import WORK, vqa_rad_tables, write_markdown

from polymodal import MultimodalPredictor
from polymodal.compress import (
    OnnxPredictor,
    distill_predictor,
    export_predictor,
    prune_predictor,
    quantize_predictor_onnx,
    quantize_predictor_torch,
)
from polymodal.compress import report as R
from polymodal.compress.onnx_export import table_batch
from polymodal.compress.quantize import Int8Options


def original(run: Path, train: pd.DataFrame, seed: int = 0) -> MultimodalPredictor:
    if (run / "model.safetensors").exists():
        return MultimodalPredictor.load(run)
    p = MultimodalPredictor(label="answer", path=run, verbose=False, progress=False, seed=seed,
                            encoders={"image": "efficientnet-lite0"}, encoder_opts={"image": {"image_size": 224}},
                            max_epochs=30, batch_size=32, patience=8, valid_fraction=0.15, class_weighting=False)
    return p.fit(train)


def verdict(t: pd.DataFrame) -> str:
    """The issue's targets, checked against this run's table."""
    row = {r["model"]: r for _, r in t.iterrows()}
    q, f, s = (row["int8 (onnxruntime)"], row["ONNX fp32 (onnxruntime)"],
               row["distilled student (PyTorch fp32)"])
    d = "Δ acc (points)"
    ok = lambda b: "met" if b else "NOT met"  # noqa: E731
    return (f"Targets: int8 ≥2× smaller and faster within 1 point: {q['size ×']}× smaller, "
            f"{q['speed-up b1 ×']}× / {q['speed-up b32 ×']}× faster (batch 1 / 32), {q[d]:+.1f} points → "
            f"size/speed {ok(q['size ×'] >= 2 and min(q['speed-up b1 ×'], q['speed-up b32 ×']) >= 2)}, "
            f"accuracy {ok(q[d] >= -1)}. Most of that speed-up is onnxruntime itself: the float ONNX graph is "
            f"already {f['speed-up b1 ×']}× / {f['speed-up b32 ×']}× faster than PyTorch; int8 adds "
            f"{f['p50 b1 (ms)'] / q['p50 b1 (ms)']:.2f}× / {f['p50 b32 (ms)'] / q['p50 b32 (ms)']:.2f}× on top. "
            f"Student ≥3× faster within 2 points: {s['speed-up b1 ×']}× / {s['speed-up b32 ×']}×, "
            f"{s[d]:+.1f} points → speed {ok(min(s['speed-up b1 ×'], s['speed-up b32 ×']) >= 3)}, "
            f"accuracy {ok(s[d] >= -2)}.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seed", type=int, default=0, help="seed of the original run (trained when missing)")
    ap.add_argument("--run", default=None, help="the original run folder (default: .work/vqa_rad_SEED)")
    ap.add_argument("--student", default="fast", help="distillation student preset (fast | small | tiny)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for PyTorch and onnxruntime alike")
    ap.add_argument("--out", default=None, help="default: results/compress_vqa_rad.md (seed 0), "
                                                "results/compress_vqa_rad_seedN.md")
    args = ap.parse_args()
    args.run = args.run or str(WORK / f"vqa_rad_{args.seed}")
    args.out = args.out or str(Path(__file__).parent / "results" / (
        "compress_vqa_rad.md" if args.seed == 0 else f"compress_vqa_rad_seed{args.seed}.md"))
    torch.set_num_threads(args.threads)
    t_start = time.time()
    out_dir = WORK / f"compress_{args.seed}"
    out_dir.mkdir(parents=True, exist_ok=True)
    train, test = vqa_rad_tables(closed_only=True)
    # model selection inside distillation / fine-tuning uses a slice of train, never the test split
    valid = train.sample(frac=0.15, random_state=0)
    fit_part = train.drop(valid.index)
    orig = original(Path(args.run), train, args.seed)
    quiet = print

    variants = []  # (name, predictor, size MB, notes)
    variants.append(("original (PyTorch fp32)", orig, R.file_size_mb(Path(args.run) / "model.safetensors"), ""))

    fp_onnx = out_dir / "vqa_fp32.onnx"
    parity = export_predictor(orig, fp_onnx, test)
    variants.append(("ONNX fp32 (onnxruntime)", OnnxPredictor(fp_onnx, threads=args.threads),
                     R.file_size_mb(fp_onnx), f"parity: {parity}"))

    # int8, default options: conv blocks picked by a sensitivity sweep on the validation slice (agreement with
    # the float model >= 99 %), dynamic int8 text MatMuls, int8 embeddings; calibrated on 128 training rows
    _, q = quantize_predictor_onnx(orig, out_dir / "vqa_int8.onnx", fit_part, rows=128, validation_table=valid)
    variants.append(("int8 (onnxruntime)", OnnxPredictor(q.path, threads=args.threads), R.file_size_mb(q.path),
                     f"int8 conv blocks {len(q.conv_groups)}/{len(q.conv_groups) + len(q.float_conv_groups)} "
                     f"(float: {', '.join(g.rsplit('/', 1)[-1] for g in q.float_conv_groups) or 'none'}); "
                     f"{len(q.dynamic_nodes)} dynamic-int8 text MatMuls; validation agreement with float "
                     f"{q.validation_agreement:.3f}"))
    if q.sweep is not None:
        q.sweep.to_csv(out_dir / "int8_sensitivity.csv", index=False)
    # the session-1 setting (every conv but the first and last, static text MatMuls), for comparison
    _, q_all = quantize_predictor_onnx(orig, out_dir / "vqa_int8_all.onnx", fit_part, rows=128,
                                       options=Int8Options(convs="all", text="static", gelu_float=False, dense=True))
    variants.append(("int8, every layer static (onnxruntime)", OnnxPredictor(q_all.path, threads=args.threads),
                     R.file_size_mb(q_all.path), "all convs but each CNN's first and last, static text MatMuls"))

    q_torch = quantize_predictor_torch(orig)
    variants.append(("int8 dynamic (PyTorch)", q_torch, R.state_size_mb(q_torch.model),
                     "Linear int8 + 8-bit word embeddings; convolutions fp32"))

    t = time.time()
    pr = prune_predictor(orig, fit_part, valid, amount=0.5, mode="structured", encoders=True, epochs=4, log=quiet)
    variants.append(("pruned 50% structured (PyTorch)", pr.predictor, R.state_size_mb(pr.predictor.model),
                     f"half the hidden channels of every inverted-residual CNN block (refitted on 128 training "
                     f"images), of the MiniLM FFNs and of the fusion/head MLPs; params {pr.params_before:,} → "
                     f"{pr.params_after:,}; prune + fine-tune {time.time() - t:.0f} s"))

    t = time.time()
    student, _ = distill_predictor(orig, fit_part, valid, args.student, overrides={"seed": args.seed},
                                   epochs=15, log=quiet)
    enc, encs = student.config.encoder_opts, student.config.encoders
    variants.append(("distilled student (PyTorch fp32)", student, R.state_size_mb(student.model),
                     f"{encs.get('image', 'efficientnet-lite0')} {enc['image']['image_size']} px + MiniLM "
                     f"{enc['text']['num_layers']} layer(s); preset {args.student}; distil {time.time() - t:.0f} s"))
    _, sq = quantize_predictor_onnx(student, out_dir / "student_int8.onnx", fit_part, rows=128,
                                    validation_table=valid)
    variants.append(("distilled student + int8 (onnxruntime)", OnnxPredictor(sq.path, threads=args.threads),
                     R.file_size_mb(sq.path), f"validation agreement with the float student "
                                              f"{sq.validation_agreement:.3f}"))

    ms = []
    reference = orig.predict(test).to_numpy()
    for name, p, size, note in variants:
        b1, b32 = table_batch(p.prep, test.head(1)), table_batch(p.prep, test.head(32))
        runner = R.onnx_runner(p.session, p.spec) if isinstance(p, OnnxPredictor) else R.torch_runner(p.model)
        pred = p.predict(test).to_numpy()
        # agreement: the share of test questions answered as the original answers them (paired, so less
        # noisy than the accuracy difference on 272 questions, where one question is 0.37 points)
        m = R.measure(name, runner, b1, b32, size, repeats1=15, repeats32=3,
                      metric=100 * float((pred == test["answer"].to_numpy()).mean()),
                      notes=note, **{"test agreement": round(float((pred == reference).mean()), 3)})
        print(m, flush=True)
        ms.append(m)
    table = R.write_report(out_dir, "VQA-RAD closed: compressed models", ms, "accuracy (%)")
    table = table.drop(columns=["notes"]).rename(columns={"accuracy (%)": "test acc (%)",
                                                         "Δ accuracy (%)": "Δ acc (points)"})
    notes = "\n".join(f"- **{m.name}**: {m.extra['notes']}" for m in ms if m.extra.get("notes"))
    notes += "\n\n" + verdict(table)
    notes = (f"Latency: end-to-end from preprocessed tensors (image 224 px or the student's size, token ids, "
             f"presence masks) through every encoder, fusion and head; {args.threads} CPU thread(s) for PyTorch "
             f"and onnxruntime; p50/p95 over 15 calls at batch 1 and 3 calls at batch 32. Ratios are against "
             f"the first row. Accuracy on the {len(test)} closed test questions (answers unseen in training count as "
             f"wrong, as in vqa_rad_closed.md). Total benchmark time {time.time() - t_start:.0f} s.\n\n" + notes)
    cmd = (f"python benchmarks/compress_vqa_rad.py --seed {args.seed} --threads {args.threads} "
           f"--student {args.student}")
    write_markdown(args.out, "VQA-RAD closed: int8, pruning, distillation", cmd, table, notes)


if __name__ == "__main__":
    main()
