"""Non-finite outputs: the server never answers a NaN/infinite prediction; a model that gives one is not ready.

A probe row with every input present (zero pixels, zero audio, an empty text, missing numbers) runs through
the model at startup, and again whenever an answer is not finite. Absent inputs are replaced inside the fusion,
so an all-missing row would hide NaN weights in an encoder; the probe marks every input present to reach them.

- probe finite, answer not: this row's values drive the model out of range → 422 for that request only.
- probe not finite: the weights are damaged → 503 for /predict, /ready false. Each /ready or /predict call
  while faulty runs the probe again (one row), so a transient fault clears by itself; damaged weights do not
  (they are read once, at startup): restart the server with a sound run folder.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from polymodal.serve.batching import MicroBatcher
from polymodal.serve.inputs import InputError, RowBuilder
from polymodal.serve.metrics import ServerMetrics

log = logging.getLogger("polymodal.serve")

NOT_FINITE = ("the model's output is not finite (NaN or infinity) even for a neutral row: its weights are "
              "damaged or it diverged in training; no prediction is given. Restart the server with a sound run "
              "folder (retrain, or restore model.safetensors from a copy)")


def finite_answer(value: Any) -> bool:
    """True when every number in a runner answer (prediction, probabilities; nested dicts) is finite."""
    if isinstance(value, dict):
        return all(finite_answer(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(finite_answer(v) for v in value)
    if isinstance(value, float):
        return math.isfinite(value)
    return True


class ModelHealth:
    """Tracks whether the model answers with finite numbers; `fault` is why it is not ready, or None."""

    def __init__(self, batcher: MicroBatcher, builder: RowBuilder, metrics: ServerMetrics) -> None:
        self.batcher, self.builder, self.metrics = batcher, builder, metrics
        self.fault: str | None = None

    async def probe(self) -> bool:
        """Run the all-present probe row (also the warm-up: the first forward allocates); sets `fault`."""
        try:
            out = await self.batcher.run_now([self.builder.probe_item()])
            fault = None if finite_answer(out[0]) else NOT_FINITE
        except Exception as exc:  # not ready, with the reason, rather than a server that cannot start
            log.exception("the model failed on the probe row")
            fault = f"the model fails on a neutral row ({type(exc).__name__}: {exc}); see the server log"
        if fault != self.fault:
            log.log(logging.ERROR if fault else logging.WARNING, "%s", fault or "the probe row's output is "
                    "finite again: the model is ready")
        self.fault = fault
        self.metrics.ready = fault is None
        return fault is None

    async def answer(self, item: dict) -> dict:
        """The micro-batched answer for one ready item; never a non-finite one.

        A model known to be faulty is probed again first (503 while it stays faulty). A non-finite answer
        or a failed forward also runs the probe: a failing probe means the model is at fault (503, not
        ready); a passing one means this row is (422 for a non-finite answer; the error itself otherwise)."""
        if self.fault is not None and not await self.probe():
            raise InputError(503, self.fault)
        try:
            out = await self.batcher.submit(item)
        except Exception:
            if not await self.probe():
                raise InputError(503, self.fault) from None
            raise
        if finite_answer(out):
            return out
        if not await self.probe():
            raise InputError(503, self.fault)
        raise InputError(422, "the model's output is not finite (NaN or infinity) for these values: they are "
                              "too far outside what the model was trained on; no prediction is given")
