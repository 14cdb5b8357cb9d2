"""A run killed with SIGKILL mid-epoch resumes and ends with the same metrics as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest


def _table(path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 6))
    y = np.where(x[:, 0] + 0.5 * x[:, 1] - x[:, 2] * x[:, 3] > 0, "pos", "neg")
    df = pd.DataFrame(x, columns=[f"f{i}" for i in range(6)])
    df["y"] = y
    df.to_csv(path, index=False)


def _fit(table, out, *extra):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "polymodal", "fit", str(table), "--label", "y", "--out", str(out),
           "--epochs", "5", "--batch-size", "8", "--patience", "10", "--seed", "3", *extra]
    return cmd, env


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    table = tmp_path / "t.csv"
    _table(table)
    cmd, env = _fit(table, tmp_path / "a")
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)

    cmd, env = _fit(table, tmp_path / "b")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "b" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert last.exists() and proc.poll() is None, "the run ended before its first checkpoint"
    time.sleep(0.5)  # well inside the second epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "b" / "metrics.json").exists()  # it really died before finishing
    assert not list((tmp_path / "b" / "checkpoints").glob("*.partial")) or last.exists()

    r = subprocess.run([sys.executable, "-m", "polymodal", "fit", "--resume", str(tmp_path / "b")], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming from" in r.stdout + r.stderr
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())["valid"]
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())["valid"]
    for k in a:
        assert b[k] == pytest.approx(a[k], abs=1e-6), k
    # history.csv keeps the epochs logged before the kill: one row per epoch, as in the uninterrupted run
    ha, hb = (pd.read_csv(tmp_path / r / "history.csv") for r in "ab")
    assert hb["epoch"].tolist() == ha["epoch"].tolist()
    from safetensors.torch import load_file

    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    for k in wa:
        np.testing.assert_allclose(wa[k].numpy(), wb[k].numpy(), atol=1e-6, err_msg=k)


def test_resume_of_a_folder_that_is_not_a_run(tmp_path):
    r = subprocess.run([sys.executable, "-m", "polymodal", "fit", "--resume", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "not an interrupted polymodal run" in r.stderr


def test_last_checkpoint_is_the_last_epoch_not_the_last_improvement(tmp_path):
    """Lightning 2.6 writes last.ckpt only when the monitored score improves; a resume must start from the
    last epoch that ran (here 3), not the last one that improved (1)."""
    import lightning as L
    import torch

    from polymodal.training.callbacks import AtomicCheckpoint

    scores = [0.5, 0.9, 0.1, 0.2]  # improves at epochs 0 and 1 only

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, _):
            return (self.w - batch[0]).pow(2).mean()

        def validation_step(self, batch, _):
            self.log("val_acc", scores[self.current_epoch])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 1)), batch_size=2)
    ckpt = AtomicCheckpoint(dirpath=tmp_path, filename="best", monitor="val_acc", mode="max", save_top_k=1,
                            save_last=True, enable_version_counter=False)
    L.Trainer(max_epochs=4, callbacks=[ckpt], logger=False, enable_progress_bar=False,
              enable_model_summary=False).fit(Module(), data, data)
    last = torch.load(tmp_path / "last.ckpt", weights_only=False)
    best = torch.load(tmp_path / "best.ckpt", weights_only=False)
    assert last["epoch"] == 3 and best["epoch"] == 1
    assert not list(tmp_path.glob("*.partial"))
