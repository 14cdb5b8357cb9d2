"""Two-process DDP (Lightning, gloo on CPU) gives the same model as one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).with_name("ddp_fit_script.py")
ROOT = Path(__file__).resolve().parents[1]


def run_fit(tmp_path: Path, devices: int, batch_size: int) -> dict:
    out, run_dir = tmp_path / f"out{devices}.json", tmp_path / f"run{devices}"
    # A subprocess: Lightning's ddp launcher re-runs the launching script for rank 1, which must not be pytest.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), str(devices), str(batch_size), str(run_dir), str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_ddp_two_processes_match_single_process(tmp_path):
    single = run_fit(tmp_path, devices=1, batch_size=16)
    ddp = run_fit(tmp_path, devices=2, batch_size=8)  # 2 ranks x 8 = the same global batch of 16
    p1, p2 = np.array(single["val_probs"]), np.array(ddp["val_probs"])
    assert p1.shape == p2.shape == (24, 2)
    # DDP averages the two half-batch gradients = the full-batch gradient; only summation order differs.
    np.testing.assert_allclose(p2, p1, atol=1e-4)
    for k, v in single["val_metrics"].items():
        assert ddp["val_metrics"][k] == pytest.approx(v, abs=1e-4), k
    # and training did something: the probabilities are not the initial near-uniform ones
    assert np.abs(p1[:, 1] - 0.5).max() > 0.05


def test_fsdp_on_cpu_is_refused_with_a_clear_message(tmp_path):
    from polymodal.errors import PolymodalError
    from polymodal.training.trainer import build_trainer

    with pytest.raises(PolymodalError, match="needs CUDA devices; on CPU use --strategy ddp"):
        build_trainer(tmp_path, "loss", "min", accelerator="cpu", devices=2, strategy="fsdp")


def test_sharded_feature_extraction_matches_one_process(tmp_path):
    """Two processes launched as torchrun does (RANK/WORLD_SIZE set up front) split the feature extraction by
    content and wait for each other's share in the shared cache: same features and problems as one process,
    each computing part of it."""
    from conftest import color_table

    table = color_table(tmp_path, n=40)
    import pandas as pd

    df = pd.read_csv(table)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    df.loc[3, "image"] = "broken.png"  # undecodable: found by its owner, reported by both ranks
    df.to_csv(table, index=False)
    script = Path(__file__).with_name("sharded_extract_script.py")
    base = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "POLYMODAL_RENDEZVOUS_TIMEOUT": "120"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID"):
        base.pop(var, None)
    one = subprocess.run([sys.executable, str(script), str(table), str(tmp_path / "c1"), str(tmp_path / "one")],
                         env=base, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    procs = [subprocess.Popen([sys.executable, str(script), str(table), str(tmp_path / "c2"), str(tmp_path / f"r{r}")],
                              env={**base, "RANK": str(r), "WORLD_SIZE": "2"}, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()[-3000:]
    ref = json.loads((tmp_path / "one.json").read_text())
    assert ref["problems"] == [[3, "image"]]
    computed = []
    for r in range(2):
        got = json.loads((tmp_path / f"r{r}.json").read_text())
        np.testing.assert_allclose(np.load(tmp_path / f"r{r}.npy"), np.load(tmp_path / "one.npy"), atol=1e-6)
        assert got["present"] == ref["present"] and got["problems"] == ref["problems"]
        computed.append(got["stats"]["computed"])
    # every decodable image computed once, by one of the two ranks, and both did some of the work
    assert sum(computed) == ref["stats"]["computed"] and min(computed) > 0
