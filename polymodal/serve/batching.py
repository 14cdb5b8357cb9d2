"""Dynamic micro-batching: concurrent requests are grouped into one model forward.

A worker takes the first waiting item, then collects more until `max_batch` items or `max_wait_ms` have
passed, runs `fn(items)` once in a single-thread executor (the event loop stays free to accept requests
while the model runs) and resolves each caller's future with its own result.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

BatchFn = Callable[[list[Any]], list[Any]]


class MicroBatcher:
    """`await batcher.submit(item)` → `fn([..., item, ...])[i]`.

    With `enabled=False` every item is run alone (batch size 1) through the same executor, so a benchmark
    compares batching on/off with everything else equal. `on_batch(size)` is called after each forward.
    """

    def __init__(self, fn: BatchFn, max_batch: int = 32, max_wait_ms: float = 5.0, enabled: bool = True,
                 on_batch: Callable[[int], None] | None = None) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
        self.fn, self.max_batch, self.max_wait = fn, max_batch, max_wait_ms / 1000.0
        self.enabled, self.on_batch = enabled, on_batch
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    @property
    def accepting(self) -> bool:
        """Submitted items will run: the worker runs (batching on) or the executor is up (batching off)."""
        return self._executor is not None and (self.running or not self.enabled)

    async def start(self) -> None:
        if self.running:
            return
        if self._executor is None:
            # One thread: forwards run one at a time; torch's own intra-op threads use the cores.
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="polymodal-forward")
        self._queue = asyncio.Queue()
        if self.enabled:
            self._worker = asyncio.create_task(self._loop(), name="polymodal-microbatcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        if self._queue is not None:  # callers still waiting learn that the server is shutting down
            while not self._queue.empty():
                _, fut = self._queue.get_nowait()
                if not fut.done():
                    fut.set_exception(RuntimeError("server shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def run_now(self, items: list[Any]) -> list[Any]:
        """Run `fn(items)` in the forward executor, bypassing the queue (warm-up, direct calls)."""
        if self._executor is None:
            raise RuntimeError("the micro-batcher is not started")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.fn, items)

    async def submit(self, item: Any) -> Any:
        if not self.enabled:
            out = await self.run_now([item])  # raises when not started, like the batching path
            self._report(1)
            return out[0]
        if not self.running:
            raise RuntimeError("the micro-batcher is not started")
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put((item, fut))
        return await fut

    def _report(self, size: int) -> None:
        if self.on_batch is not None:
            self.on_batch(size)

    async def _collect(self) -> list[tuple[Any, asyncio.Future]]:
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            if not self._queue.empty():  # take what is already waiting without a timer
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _loop(self) -> None:
        while True:
            batch = await self._collect()
            live = [(item, fut) for item, fut in batch if not fut.cancelled()]  # client gone: skip its work
            if not live:
                continue
            try:
                results = await self.run_now([item for item, _ in live])
                if len(results) != len(live):
                    raise RuntimeError(f"batch function returned {len(results)} results for {len(live)} items")
            except Exception as exc:  # every caller of this batch gets the error; the worker keeps going
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self._report(len(live))
            for (_, fut), res in zip(live, results):
                if not fut.done():
                    fut.set_result(res)
