"""`average_epochs K`: the kept weights are the mean of the last K completed epochs' trainable weights (BatchNorm
statistics as the last epoch left them), the run saves and reloads them, resume continues the window, and K=0
keeps the best checkpoint as before."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from polymodal import MultimodalPredictor
from polymodal.errors import PolymodalError
from polymodal.training import pipeline
from polymodal.training.averaging import EpochAverage

FAST = {"batch_size": 32, "patience": 10, "progress": False, "verbose": False, "seed": 1}


def _table(n: int = 240) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4))
    df = pd.DataFrame(x, columns=[f"f{i}" for i in range(4)])
    df["y"] = np.where(x[:, 0] - x[:, 1] + 0.5 * rng.normal(size=n) > 0, "pos", "neg")
    return df


class Capture(Callback):
    """The model's trainable parameters and buffers at each epoch's end (independently of EpochAverage's hooks);
    `crash_at`: raise at the start of that epoch, as a killed run."""

    def __init__(self, crash_at: int | None = None) -> None:
        self.params: dict[int, dict[str, torch.Tensor]] = {}
        self.buffers: dict[int, dict[str, torch.Tensor]] = {}
        self.crash_at = crash_at

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.crash_at:
            raise RuntimeError("killed")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        model = pl_module.model
        self.params[trainer.current_epoch] = {n: p.detach().cpu().clone() for n, p in model.named_parameters()
                                              if p.requires_grad}
        self.buffers[trainer.current_epoch] = {n: b.detach().cpu().clone() for n, b in model.named_buffers()}


class Captured(list):
    """The Capture callbacks of the fits so far; `crash_next`: the epoch at which the next fit is killed."""

    crash_next: int | None = None


@pytest.fixture
def captured(monkeypatch) -> Captured:
    """Each fit's Trainer gets a Capture callback, appended to the returned list."""
    caps = Captured()
    real = pipeline.build_trainer

    def build(*args, **kwargs):
        trainer, ckpt = real(*args, **kwargs)
        cap = Capture(crash_at=caps.crash_next)
        caps.crash_next = None
        trainer.callbacks.append(cap)
        caps.append(cap)
        return trainer, ckpt

    monkeypatch.setattr(pipeline, "build_trainer", build)
    return caps


def _mean(weights: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {n: sum(w[n].double() for w in weights) / len(weights) for n in weights[0]}


def _assert_kept(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    kept = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
    assert kept.keys() == expected.keys()
    for n, v in expected.items():
        np.testing.assert_allclose(kept[n].double().numpy(), v.double().numpy(), rtol=1e-6, atol=1e-7, err_msg=n)


def test_kept_weights_are_the_mean_of_the_last_k_epochs(tmp_path, captured):
    df = _table()
    p = MultimodalPredictor(label="y", path=tmp_path / "run", max_epochs=5, average_epochs=3, **FAST).fit(df)
    cap = captured[-1]
    assert sorted(cap.params) == [0, 1, 2, 3, 4]
    _assert_kept(p.model, _mean([cap.params[e] for e in (2, 3, 4)]))
    # not trivially the last epoch: the epochs differ
    assert any(not torch.equal(cap.params[2][n], cap.params[4][n]) for n in cap.params[4])
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert history.set_index("epoch")["averaged"].to_dict() == {0: 0, 1: 0, 2: 1, 3: 1, 4: 1}
    assert p._result.extra["averaged_epochs"] == [2, 3, 4]
    assert "accuracy" in p.metrics["valid"]  # the averaged model's own validation score

    # saved, reloaded: the same weights and the same predictions
    loaded = MultimodalPredictor.load(tmp_path / "run")
    a = p.predict_proba(df.drop(columns="y"), engine="torch")
    b = loaded.predict_proba(df.drop(columns="y"), engine="torch")
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), atol=1e-6)


def test_one_epoch_is_the_last_epoch_and_more_than_ran_is_all(captured):
    df = _table()
    p = MultimodalPredictor(label="y", max_epochs=3, average_epochs=1, **FAST).fit(df)
    _assert_kept(p.model, {n: v.double() for n, v in captured[-1].params[2].items()})
    p = MultimodalPredictor(label="y", max_epochs=3, average_epochs=10, **FAST).fit(df)
    _assert_kept(p.model, _mean([captured[-1].params[e] for e in (0, 1, 2)]))
    assert p._result.extra["averaged_epochs"] == [0, 1, 2]


def test_zero_keeps_the_best_checkpoint(tmp_path, captured):
    df = _table()
    p = MultimodalPredictor(label="y", path=tmp_path / "run", max_epochs=4, **FAST).fit(df)
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert not any("EpochAverage" in k for k in best.get("callbacks", {}))
    _assert_kept(p.model, {n.removeprefix("model."): v for n, v in best["state_dict"].items()
                           if n.startswith("model.") and not n.endswith(("running_mean", "running_var",
                                                                         "num_batches_tracked"))})
    assert "averaged" not in pd.read_csv(tmp_path / "run" / "history.csv")
    assert "averaged_epochs" not in p._result.extra


def test_resume_continues_the_window_from_the_checkpoint(tmp_path, captured):
    # a regression target whose validation loss improves every epoch: Lightning (2.6) writes last.ckpt only
    # when the monitored score improves, and the test needs it at the epoch before the kill
    df = _table().assign(y=lambda d: d["f0"] - d["f1"])
    settings = {"label": "y", "max_epochs": 4, "average_epochs": 3, **FAST}
    whole = MultimodalPredictor(path=tmp_path / "a", **settings).fit(df)
    captured.crash_next = 3  # killed at the start of epoch 3
    with pytest.raises(RuntimeError, match="killed"):
        MultimodalPredictor(path=tmp_path / "b", **settings).fit(df)
    first = captured[-1]
    last = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 2 and last["callbacks"]["EpochAverage"]["epochs"] == [0, 1, 2]
    resumed = MultimodalPredictor(path=tmp_path / "b", **settings).fit(df, resume=True)
    second = captured[-1]
    # epochs 1 and 2 can only come from the checkpoint's window: the resumed run trains epoch 3 alone
    assert sorted(first.params) == [0, 1, 2] and sorted(second.params) == [3]
    _assert_kept(resumed.model, _mean([first.params[1], first.params[2], second.params[3]]))
    _assert_kept(resumed.model, {n: p.detach().double() for n, p in whole.model.named_parameters() if p.requires_grad})
    assert resumed._result.extra["averaged_epochs"] == [1, 2, 3]


def test_batchnorm_statistics_are_the_last_epochs(image_table, captured):
    """A trained encoder with BatchNorm (small-cnn, not pretrained, so it trains): its parameters are averaged,
    its running statistics kept as the last epoch left them."""
    p = MultimodalPredictor(label="label", encoders={"image": "small-cnn"}, max_epochs=3, average_epochs=2,
                            batch_size=16, patience=10, progress=False, verbose=False, seed=0)
    p.fit(pd.read_csv(image_table).assign(image=lambda d: str(image_table.parent) + "/" + d["image"]))
    cap = captured[-1]
    _assert_kept(p.model, _mean([cap.params[1], cap.params[2]]))
    stats = {n: b for n, b in p.model.named_buffers() if n.endswith(("running_mean", "running_var"))}
    assert stats, "small-cnn has BatchNorm layers"
    for n, b in stats.items():
        torch.testing.assert_close(b.cpu(), cap.buffers[2][n], msg=n)
    assert any(not torch.equal(cap.buffers[1][n], cap.buffers[2][n]) for n in stats)  # they did move


def test_average_epochs_is_checked():
    with pytest.raises(PolymodalError, match="--average-epochs"):
        MultimodalPredictor(label="y", average_epochs=-1)
    with pytest.raises(ValueError):
        EpochAverage(0)
