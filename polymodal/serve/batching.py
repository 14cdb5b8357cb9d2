"""Dynamic micro-batching: concurrent requests are grouped into one model forward, when that pays.

One forward thread takes waiting items from a thread-safe queue, runs `fn(items)` and resolves each caller's
future on the event loop with its own result. The thread picks the next batch itself, so forwards run back to
back without waiting for the event loop between them (as a plain executor queue does without batching).

How many items go into one forward and how long a lone item waits for company come from `BatchPolicy`, from
measured forward latency rather than fixed settings. Measured on the 2-core machine (docs/benchmarks.md,
"Inference engines"): a CNN's forward on CPU costs about the same per row at batch 1 as at batch 8 (24.7 vs
25.0 ms with one onnxruntime thread; ~20 % less at 4-8 rows with two) and more at batch 16 (26.4; 31.7 with
two threads), and the old fixed policy, which took every queued request into one forward, lost to no
batching at 64 clients: rows of a batch wait for each other, and a saving measured in isolation did not
survive decoding threads competing for the same cores. The server calibrates at startup
(`calibrate`: per-row cost at each batch size, sizes interleaved) and batches only up to a size that is
clearly cheaper per row (by 15 %); where none is, batching runs exactly as no batching does.

A forward that is cheaper per row in isolation can still lose in the server (measured: batches of ~3 rows
at 8 clients, 79 vs 83 requests/s), so where the calibration says batching pays, the policy also checks it
while serving: it alternates windows of batching and of one-row forwards under whatever load is offered,
compares the rows each mode answers per second while requests are waiting, keeps the winner for a while and
checks again. Not the requests' mean latency (the first version): with a deep queue (64 clients) most rows of a
window were queued under the window before it, so their latency measures the other mode (a simulation with
batching 10 % cheaper per row had the latency check choose one row per forward, as run E's 64 clients did).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

BatchFn = Callable[[list[Any]], list[Any]]
log = logging.getLogger("polymodal.serve")


class BatchPolicy:
    """Adaptive batch size and wait from measured forward latency (thread-safe under its caller's lock).

    `calibrate(costs)` takes the forward's seconds per row at batch sizes 1, 2, 4, ... measured side by side
    (`MicroBatcher.calibrate`: interleaved rounds at startup, so load from other processes hits every size
    alike). Batching engages only when the cheapest size costs at least `min_gain` less per row than one row:
    a few rounds on a loaded machine scatter by several per cent, and rows of a batch wait for each other, so
    a smaller gain is as likely noise as it is paid back. `limit()` is then the smallest size whose cost per
    row is within `tolerance` of the cheapest (a larger batch makes its rows wait longer for the same
    throughput); otherwise 1, and batching runs as no batching does. Costs measured while serving are not
    used for the limit: each batch size occurs at its own load level (large batches only when the queue is
    deep), so comparing them would compare loads, not sizes. Before calibration every queued item is taken.

    `wait()` is how long a lone item waits for company: at most `max_wait`, never longer than one forward of a
    single row (EWMA while serving), and only when batching pays (or is not measured) and the mean gap between
    arrivals (EWMA) is shorter than that wait, so that company is expected.

    Online check (where the calibration says batching pays): windows of `window` rows answered alternate
    between the calibrated limit and one row per forward (batch, single, batch, single); the mode that answers
    more rows per second of occupied time (time during which some request was waiting or being answered;
    idle time between requests is not counted) is kept for `keep` windows (single unless batching is higher
    by `margin`: a tie is no reason to make rows wait for each other), then the check runs again. Under a load
    that keeps requests waiting this is the throughput each mode sustains, whichever mode left the queue
    behind; under a light load both modes answer what arrives and tie. Windows in which no forward had
    company (one client) do not count: the two modes then run alike.
    """

    EXPLORE = (True, False, True, False)  # the check's windows: batching on, off, on, off

    def __init__(self, max_batch: int, max_wait_s: float, alpha: float = 0.25, tolerance: float = 0.05,
                 min_gain: float = 0.15, window: int = 48, keep: int = 12, margin: float = 0.02) -> None:
        self.max_batch, self.max_wait, self.alpha, self.tolerance = max_batch, max_wait_s, alpha, tolerance
        self.min_gain, self.window, self.keep, self.margin = min_gain, window, keep, margin
        self.batching = True  # the online check's current mode (only matters where the calibration says pays)
        self._step = 0  # position in the cycle: EXPLORE's windows, then `keep` windows of the chosen mode
        self._rows, self._occupied, self._latency, self._queued = 0, 0.0, 0.0, 0  # the current window's
        self._last_end: float | None = None  # when the last forward's rows were answered
        self._trial: dict[bool, list[float]] = {True: [0, 0.0], False: [0, 0.0]}  # rows, occupied s per mode
        self.decisions: deque[dict] = deque(maxlen=20)  # the latest checks' outcomes (logs, tests)
        self.checks, self.kept_batching = 0, 0  # all checks, and those that kept batching (/metrics)
        self.sizes = sorted({min(max_batch, 1 << i) for i in range(max_batch.bit_length() + 1)})
        self.costs: dict[int, float] = {}  # calibrated seconds per row by batch size
        self.single: float | None = None  # EWMA seconds of a one-row forward while serving
        self.gap: float | None = None  # EWMA seconds between arrivals
        self._last_arrival: float | None = None
        self._limit = max_batch

    def calibrate(self, costs: dict[int, float]) -> None:
        """Set the limit from seconds per row measured at several batch sizes."""
        self.costs = {int(k): float(v) for k, v in costs.items() if 1 <= int(k) <= self.max_batch}
        if not self.costs:
            return
        best = min(self.costs.values())
        self._limit = min(k for k, v in self.costs.items() if v <= best * (1 + self.tolerance))
        if 1 in self.costs:
            self.single = self.costs[1]
            if best > self.costs[1] * (1 - self.min_gain):
                self._limit = 1

    def arrived(self, now: float) -> None:
        if self._last_arrival is not None:
            gap = now - self._last_arrival
            self.gap = gap if self.gap is None else self.gap + self.alpha * (gap - self.gap)
        self._last_arrival = now

    def observe(self, size: int, seconds: float) -> None:
        """One forward of `size` rows took `seconds` (one-row forwards bound the wait)."""
        if size == 1:
            self.single = seconds if self.single is None else self.single + self.alpha * (seconds - self.single)

    def answered(self, latencies: list[float], queued: int, now: float) -> None:
        """A forward's rows were answered at `now` (perf_counter seconds), `latencies` seconds after they were
        submitted, with `queued` items still waiting when it started (company, or not). Advances the online
        check."""
        if self.pays() is not True or not latencies:
            return
        # occupied time: from the earliest submission of these rows (or the previous answer, if later) to now
        first = now - max(latencies)
        self._occupied += now - (first if self._last_end is None else max(first, self._last_end))
        self._last_end = now
        self._rows += len(latencies)
        self._latency += sum(latencies)
        self._queued += queued + len(latencies) - 1
        if self._rows < self.window:
            return
        rows, occupied, mean = self._rows, self._occupied, self._latency / self._rows
        contended = self._queued > 0
        self._rows, self._occupied, self._latency, self._queued = 0, 0.0, 0.0, 0
        if self._step < len(self.EXPLORE):
            if not contended or occupied <= 0:  # one client: both modes ran alike, this window tells nothing
                return
            trial = self._trial[self.batching]
            trial[0] += rows
            trial[1] += occupied
            self._step += 1
            if self._step == len(self.EXPLORE):
                on, off = (self._trial[m][0] / self._trial[m][1] for m in (True, False))
                self.batching = on > off * (1 + self.margin)
                self.checks += 1
                self.kept_batching += self.batching
                self.decisions.append({"batching_rows_per_s": round(on, 1), "single_rows_per_s": round(off, 1),
                                       "batching": self.batching})
                log.debug("micro-batching check: %.1f rows/s batching, %.1f one row per forward (last window's "
                          "mean latency %.1f ms): %s", on, off, mean * 1000,
                          "batching" if self.batching else "one row per forward")
            else:
                self.batching = self.EXPLORE[self._step]
            return
        self._step += 1
        if self._step >= len(self.EXPLORE) + self.keep:  # check again: the load may have changed
            self._step, self._trial = 0, {True: [0, 0.0], False: [0, 0.0]}
            self.batching = self.EXPLORE[0]

    def limit(self) -> int:
        """Most items to put in the next forward."""
        return self._limit if self.batching or self.pays() is not True else 1

    def pays(self) -> bool | None:
        """Whether batches of the calibrated limit cost less per row than one row (None: not calibrated)."""
        if 1 not in self.costs:
            return None
        return self._limit > 1

    def wait(self) -> float:
        """Seconds a lone item waits for company before its forward starts."""
        if self.limit() < 2 or self.max_wait <= 0 or self.pays() is False:
            return 0.0
        wait = self.max_wait if self.single is None else min(self.max_wait, self.single)
        return wait if self.gap is None or self.gap < wait else 0.0  # None: nothing to go by yet

    def state(self) -> dict:
        """What the policy has measured (for logs and tests)."""
        return {"limit": self._limit, "wait_s": self.wait(), "single_row_s": self.single, "gap_s": self.gap,
                "calibrated_s_per_row": dict(self.costs), "batching_now": self.limit() > 1,
                "checks": list(self.decisions)[-5:]}


class _Entry:
    """Queued work: one submitted item, or a job (`call`) that runs alone (run_now, calibration)."""

    __slots__ = ("items", "future", "loop", "call", "submitted")

    def __init__(self, items: list[Any], future: asyncio.Future, loop: asyncio.AbstractEventLoop,
                 call: Callable[[], Any] | None = None):
        self.items, self.future, self.loop, self.call = items, future, loop, call
        self.submitted = time.perf_counter()


def _resolve(fut: asyncio.Future, result: Any = None, error: BaseException | None = None) -> None:
    if not fut.done():  # the caller may have gone (cancelled) meanwhile
        fut.set_exception(error) if error is not None else fut.set_result(result)


class MicroBatcher:
    """`await batcher.submit(item)` → `fn([..., item, ...])[i]`.

    With `enabled=False` every item is run alone (batch size 1) by the same forward thread, so a benchmark
    compares batching on/off with everything else equal. `on_batch(size)` is called (on the event loop) after
    each forward. A batch whose forward fails is run again one item at a time, so only the items that fail
    alone get an error.
    """

    def __init__(self, fn: BatchFn, max_batch: int = 32, max_wait_ms: float = 5.0, enabled: bool = True,
                 on_batch: Callable[[int], None] | None = None) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
        self.fn, self.max_batch, self.max_wait = fn, max_batch, max_wait_ms / 1000.0
        self.enabled, self.on_batch = enabled, on_batch
        self.policy = BatchPolicy(max_batch if enabled else 1, self.max_wait if enabled else 0.0)
        self._queue: deque[_Entry] = deque()
        self._cond = threading.Condition()
        # How long forwards were held back waiting for company (a lone item's wait), for /metrics: the one
        # place batching can make a request slower than no batching does.
        self.company_waits, self.company_wait_s = 0, 0.0
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._queued = 0

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    @property
    def accepting(self) -> bool:
        """Submitted items will run: the forward thread is up."""
        return self.running

    async def start(self) -> None:
        if self.running:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="polymodal-forward", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        if self._thread is None:
            return
        with self._cond:
            self._stopping = True
            left = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for e in left:  # callers still waiting learn that the server is shutting down
            _on_loop(e.loop, _resolve, e.future, None, RuntimeError("server shutting down"))
        await asyncio.to_thread(self._thread.join)  # the forward in progress finishes
        self._thread = None

    async def run_now(self, items: list[Any]) -> list[Any]:
        """Run `fn(items)` as one forward of its own on the forward thread (warm-up, direct calls)."""
        return await self._put(items, lambda: self.fn(items))

    async def submit(self, item: Any) -> Any:
        return (await self._put([item]))[0]

    async def calibrate(self, item: Any, rounds: int = 3, budget_s: float = 6.0) -> dict:
        """Measure the forward's seconds per row at batch sizes 1, 2, 4, ... max_batch with copies of `item`
        (rounds interleaved: each round runs every size once; sizes are added in the first round until a
        third of `budget_s` is spent) and set the batch limit from them. Batching off: nothing to measure."""
        if not self.enabled or self.max_batch < 2:
            return {}
        try:
            state = await self._put([], lambda: self._calibrate(item, rounds, budget_s))
        except Exception as exc:  # a model that fails on a batch of copies still serves; the limit stays
            log.warning("micro-batching: calibration failed (%s: %s); batches of up to %d rows", type(exc).__name__,
                        exc, self.max_batch)
            return {}
        log.info("micro-batching: forward ms per row by batch size %s; batches of up to %d rows",
                 {k: round(v * 1000, 2) for k, v in state["calibrated_s_per_row"].items()}, state["limit"])
        return state

    def _calibrate(self, item: Any, rounds: int, budget_s: float) -> dict:
        times: dict[int, list[float]] = {}
        start = time.perf_counter()
        for r in range(rounds):
            for size in self.policy.sizes if r == 0 else list(times):
                if r == 0 and times and time.perf_counter() - start > budget_s / rounds:
                    break
                # distinct copies: rows that share one array (an image) are encoded once (the Collator's
                # distinct images), which concurrent requests, each with its own upload, never are
                batch = [item] + [copy.deepcopy(item) for _ in range(size - 1)]
                t = time.perf_counter()
                self.fn(batch)
                times.setdefault(size, []).append((time.perf_counter() - t) / size)
        costs = {k: sorted(v)[len(v) // 2] for k, v in times.items()}  # median of the rounds
        with self._cond:
            self.policy.calibrate(costs)
        return self.policy.state()

    async def _put(self, items: list[Any], call: Callable[[], Any] | None = None) -> Any:
        if not self.running:
            raise RuntimeError("the micro-batcher is not started")
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._cond:
            if call is None:
                self.policy.arrived(time.perf_counter())
            self._queue.append(_Entry(items, fut, loop, call))
            self._cond.notify()
        return await fut

    def _take(self) -> list[_Entry] | None:
        """The next forward's entries (None: stopping). A run_now entry goes alone."""
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            first = self._queue.popleft()
            if first.call is not None:
                return [first]
            batch, limit = [first], self.policy.limit()
            self._queued = len(self._queue)  # company at the start of this forward (the online check's test)
            start = time.perf_counter()
            deadline, waited = start + self.policy.wait(), False
            while len(batch) < limit:
                if self._queue and self._queue[0].call is None:
                    batch.append(self._queue.popleft())
                    continue
                remaining = deadline - time.perf_counter()
                if self._queue or remaining <= 0 or self._stopping:  # a job waits its turn
                    break
                waited = True
                self._cond.wait(remaining)
            if waited:
                self.company_waits += 1
                self.company_wait_s += time.perf_counter() - start
            return batch

    def _work(self) -> None:
        while (batch := self._take()) is not None:
            live = [e for e in batch if not e.future.cancelled()]  # client gone: skip its work
            if live:
                self._run(live)

    def _forward(self, items: list[Any]) -> list[Any]:
        t = time.perf_counter()
        results = self.fn(items)
        if len(results) != len(items):
            raise RuntimeError(f"batch function returned {len(results)} results for {len(items)} items")
        with self._cond:
            self.policy.observe(len(items), time.perf_counter() - t)
        return results

    def _run(self, live: list[_Entry]) -> None:
        if live[0].call is not None:
            try:
                self._deliver(live[0], live[0].call())
            except Exception as exc:
                self._fail(live[0], exc)
            return
        try:
            results = self._forward([e.items[0] for e in live])
        except Exception as exc:
            if len(live) == 1:
                self._fail(live[0], exc)
                return
            # one bad item must not fail the others: each runs alone, and only those that fail alone get an error
            for e in live:
                try:
                    self._deliver(e, self._forward(e.items), 1)
                except Exception as alone:
                    self._fail(e, alone)
            return
        self._report(live[0].loop, len(live))
        for e, res in zip(live, results):
            self._deliver(e, [res])
        now = time.perf_counter()
        with self._cond:
            self.policy.answered([now - e.submitted for e in live], self._queued, now)

    def _deliver(self, e: _Entry, results: list[Any], report: int = 0) -> None:
        if report:
            self._report(e.loop, report)
        _on_loop(e.loop, _resolve, e.future, results)

    def _fail(self, e: _Entry, exc: Exception) -> None:
        _on_loop(e.loop, _resolve, e.future, None, exc)

    def _report(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        if self.on_batch is not None:
            _on_loop(loop, self.on_batch, size)


def _on_loop(loop: asyncio.AbstractEventLoop, fn: Callable, *args: Any) -> None:
    """Run `fn(*args)` on the caller's event loop; a closed loop means the caller is gone (the forward thread
    must not die of it)."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        pass
