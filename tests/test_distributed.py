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
