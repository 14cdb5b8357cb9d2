"""Micro-batching (polymodal/serve/batching.py): the adaptive policy's choices from measured forward costs, and
the batcher's behaviour — answers equal to running each item alone, a failing item does not fail its batch,
callers gone and shutdown handled. No timing asserts: the policy is fed measured costs directly, and the
batcher's tests check answers and batch contents, not speed."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from polymodal.serve.batching import BatchPolicy, MicroBatcher


def test_policy_takes_what_is_queued_until_calibrated():
    p = BatchPolicy(max_batch=32, max_wait_s=0.005)
    assert p.limit() == 32 and p.pays() is None and p.sizes == [1, 2, 4, 8, 16, 32]
    assert p.wait() == 0.005  # nothing known about arrivals or batching: the configured wait
    assert BatchPolicy(max_batch=5, max_wait_s=0).sizes == [1, 2, 4, 5]


def test_policy_does_not_batch_when_larger_batches_cost_as_much_per_row():
    """A CNN on CPU: per-row cost flat up to 8 rows, worse beyond (the measured shape in docs/benchmarks.md)."""
    p = BatchPolicy(max_batch=32, max_wait_s=0.005)
    p.calibrate({1: 0.0250, 2: 0.0245, 4: 0.0250, 8: 0.0251, 16: 0.032, 32: 0.040})
    assert p.limit() == 1 and p.pays() is False
    p.arrived(0.0)
    p.arrived(0.0001)  # even with company arriving, a lone item does not wait
    assert p.wait() == 0.0


def test_policy_batches_up_to_the_smallest_size_that_is_nearly_cheapest():
    p = BatchPolicy(max_batch=32, max_wait_s=0.005)
    p.calibrate({1: 0.010, 2: 0.006, 4: 0.0041, 8: 0.0040, 16: 0.0042, 32: 0.006})
    assert p.limit() == 4 and p.pays() is True  # 8 is cheapest, but 4 is within 5 % and its rows wait less
    p.calibrate({1: 0.010, 2: 0.006, 4: 0.005, 8: 0.0040})
    assert p.limit() == 8


def test_policy_ignores_gains_within_the_calibration_noise():
    p = BatchPolicy(max_batch=8, max_wait_s=0.005)
    p.calibrate({1: 0.0250, 2: 0.0230, 4: 0.0225, 8: 0.0240})  # 10 % cheaper at best: not clearly paying
    assert p.limit() == 1 and p.pays() is False and p.wait() == 0.0
    p.calibrate({1: 0.0250, 2: 0.0230, 4: 0.0200, 8: 0.0240})  # 20 %: batches of up to 4
    assert p.limit() == 4 and p.pays() is True


def test_policy_waits_only_when_company_is_expected_and_never_longer_than_one_forward():
    p = BatchPolicy(max_batch=8, max_wait_s=0.005)
    p.calibrate({1: 0.010, 2: 0.006, 4: 0.004, 8: 0.004})
    p.arrived(0.0)
    p.arrived(0.001)  # arrivals 1 ms apart: company is expected within the wait
    assert p.wait() == pytest.approx(0.005)
    for t in (0.101, 0.201, 0.301, 0.401, 0.501):
        p.arrived(t)  # 100 ms apart (one client): waiting would only delay it
    assert p.wait() == 0.0
    fast = BatchPolicy(max_batch=8, max_wait_s=0.050)
    fast.calibrate({1: 0.002, 8: 0.0002})
    fast.arrived(0.0)
    fast.arrived(0.0001)
    assert fast.wait() == pytest.approx(0.002)  # a 2 ms forward: waiting 50 ms for company never pays
    for _ in range(20):
        fast.observe(1, 0.004)  # the load doubled the forward's time: the cap follows
    assert fast.wait() == pytest.approx(0.004, rel=0.01)
    fast.observe(8, 1.0)  # batch forwards do not move the one-row estimate
    assert fast.wait() == pytest.approx(0.004, rel=0.01)


def test_batching_off_is_one_row_per_forward_and_never_waits():
    p = BatchPolicy(max_batch=1, max_wait_s=0.0)
    p.arrived(0.0)
    p.arrived(0.0)
    assert p.limit() == 1 and p.wait() == 0.0 and p.sizes == [1]


def test_calibration_measures_every_size_and_sets_the_limit():
    """The batch function's cost per row is made to fall steeply with size (a 4 ms sleep per call), so the
    calibrated limit is the largest size (flat costs are the policy tests' part)."""
    import time

    calls = []

    def cheap_when_batched(xs):
        calls.append(len(xs))
        time.sleep(0.004 + 0.0001 * len(xs))  # fixed overhead per forward: batching pays
        return xs

    async def main(fn):
        b = MicroBatcher(fn, max_batch=8, max_wait_ms=5)
        await b.start()
        state = await b.calibrate("probe", rounds=3)
        await b.stop()
        return state

    state = asyncio.run(main(cheap_when_batched))
    assert sorted(set(calls)) == [1, 2, 4, 8] and calls.count(8) == 3  # every size, three rounds, interleaved
    assert calls[:4] == [1, 2, 4, 8] and state["limit"] == 8
    off = MicroBatcher(lambda xs: xs, enabled=False)
    assert asyncio.run(off.calibrate("probe")) == {}  # batching off: nothing to calibrate


def test_calibration_batches_hold_distinct_copies_of_the_probe():
    """Rows sharing one array are encoded once (the Collator's distinct images), which concurrent requests,
    each decoding its own upload, never do: the calibration's rows must not share arrays either, or it
    measures the image encoder once per batch and finds batching cheaper than it is."""
    import numpy as np

    seen = []

    def record(items):
        seen.append(len({id(it["inputs"]["image"]) for it in items}) == len(items))
        return items

    async def main():
        b = MicroBatcher(record, max_batch=4, max_wait_ms=5)
        await b.start()
        await b.calibrate({"inputs": {"image": np.zeros((3, 4, 4), np.float32)}}, rounds=2)
        await b.stop()

    asyncio.run(main())
    assert len(seen) == 6 and all(seen)  # sizes 1, 2, 4 twice, never an array shared by two rows


def run_batcher(fn, items, **kw):
    sizes: list[int] = []

    async def main():
        b = MicroBatcher(fn, on_batch=sizes.append, **kw)
        await b.start()
        out = await asyncio.gather(*(b.submit(i) for i in items), return_exceptions=True)
        await b.stop()
        return out, b

    out, b = asyncio.run(main())
    return out, sizes, b


@pytest.mark.parametrize("enabled", [True, False])
def test_answers_equal_with_and_without_batching(enabled):
    calls = []

    def fn(xs):
        calls.append(list(xs))
        return [x * x + len(xs) * 0 for x in xs]  # an answer must not depend on its batch-mates

    out, sizes, _ = run_batcher(fn, list(range(20)), max_batch=8, max_wait_ms=50, enabled=enabled)
    assert out == [i * i for i in range(20)]
    assert sum(sizes) == 20 and max(sizes) <= (8 if enabled else 1)
    assert sorted(x for c in calls for x in c) == list(range(20))  # each item forwarded once
    assert (len(calls) < 20) == enabled


def test_a_failing_item_does_not_fail_its_batch_mates():
    calls = []

    def fn(xs):
        calls.append(list(xs))
        if any(x in (3, 7) for x in xs):
            raise ValueError(f"bad item in {xs}")
        return [-x for x in xs]

    out, _, b = run_batcher(fn, list(range(10)), max_batch=16, max_wait_ms=100)
    for i, r in enumerate(out):
        if i in (3, 7):
            assert isinstance(r, ValueError) and f"[{i}]" in str(r)  # its own error, from its own forward
        else:
            assert r == -i
    assert len(calls[0]) > 1  # they were batched before the failure split them


def test_wrong_number_of_results_is_an_error_not_a_hang():
    out, _, _ = run_batcher(lambda xs: xs[:1] if len(xs) > 1 else [], [1, 2], max_batch=4, max_wait_ms=50)
    assert all(isinstance(r, RuntimeError) and "results" in str(r) for r in out)


def test_run_now_goes_alone_and_cancelled_callers_are_skipped():
    seen = []
    gate = threading.Event()

    def fn(xs):
        seen.append(list(xs))
        gate.wait(5)
        return xs

    async def main():
        b = MicroBatcher(fn, max_batch=8, max_wait_ms=0)
        await b.start()
        first = asyncio.create_task(b.submit("first"))  # occupies the forward thread until the gate opens
        await asyncio.sleep(0.05)
        gone = asyncio.create_task(b.submit("gone"))
        kept = asyncio.create_task(b.submit("kept"))
        whole = asyncio.create_task(b.run_now(["probe-a", "probe-b"]))
        await asyncio.sleep(0.05)
        gone.cancel()
        gate.set()
        res = await asyncio.gather(first, kept, whole)
        await b.stop()
        return res

    res = asyncio.run(main())
    assert res == ["first", "kept", ["probe-a", "probe-b"]]
    assert ["probe-a", "probe-b"] in seen and all("gone" not in s for s in seen)
    assert all(s == ["probe-a", "probe-b"] or "probe-a" not in s for s in seen)  # never merged with others


def test_stop_fails_waiting_callers_and_submit_needs_a_started_batcher():
    gate = threading.Event()

    async def main():
        b = MicroBatcher(lambda xs: gate.wait(5) and xs, max_batch=1, max_wait_ms=0)
        with pytest.raises(RuntimeError, match="not started"):
            await b.submit(1)
        await b.start()
        busy = asyncio.create_task(b.submit(1))
        await asyncio.sleep(0.05)
        queued = asyncio.create_task(b.submit(2))
        await asyncio.sleep(0.05)
        stopping = asyncio.create_task(b.stop())
        await asyncio.sleep(0.05)
        gate.set()
        await stopping
        assert not b.accepting
        return await asyncio.gather(busy, queued, return_exceptions=True)

    busy, queued = asyncio.run(main())
    assert busy == 1  # the forward in progress finishes
    assert isinstance(queued, RuntimeError) and "shutting down" in str(queued)


def test_the_server_calibrates_its_batcher_at_startup(tmp_path):
    """create_app: after the warm-up probe, the batching server measures its forward at each batch size and
    sets its limit from that; a server without batching measures nothing and forwards one row at a time."""
    import shutil

    from fastapi.testclient import TestClient

    from polymodal.runs import load_run
    from polymodal.serve.app import create_app
    from tests.test_golden_run import GOLDEN

    shutil.copytree(GOLDEN / "run", tmp_path / "run")  # the ONNX engine caches its graph beside the run
    p = load_run(tmp_path / "run")
    with TestClient(create_app(p, max_batch=8)) as c:
        assert c.get("/ready").status_code == 200
        policy = c.app.state.batcher.policy
        assert sorted(policy.costs) == [1, 2, 4, 8] and policy.limit() in (1, 2, 4, 8)
        assert all(v > 0 for v in policy.costs.values())
        metrics = c.get("/metrics").text
        assert "# TYPE polymodal_batch_company_waits_total counter" in metrics
        assert f"polymodal_batch_company_waits_total {c.app.state.batcher.company_waits}" in metrics
    with TestClient(create_app(p, batching=False)) as c:
        assert c.get("/ready").status_code == 200
        assert c.app.state.batcher.policy.costs == {} and c.app.state.batcher.policy.limit() == 1
        assert "polymodal_batch_company_wait_seconds_total 0.0" in c.get("/metrics").text


@pytest.mark.parametrize("enabled", [True, False])
def test_company_waits_are_counted_only_when_a_lone_item_waits(enabled):
    """Before any arrivals are known, a lone item waits up to max_wait for company (the policy's first guess);
    the batcher counts that wait. Batching off never waits."""
    async def main():
        b = MicroBatcher(lambda xs: list(xs), max_batch=8, max_wait_ms=30, enabled=enabled)
        await b.start()
        assert await b.submit(1) == 1
        await b.stop()
        return b

    b = asyncio.run(main())
    if enabled:
        assert b.company_waits == 1 and 0.02 <= b.company_wait_s < 5.0
    else:
        assert b.company_waits == 0 and b.company_wait_s == 0.0


def test_online_check_keeps_batching_only_where_it_answers_more_rows_per_second():
    """Where the calibration says batching pays, windows of batching and of one-row forwards alternate while
    serving, and the mode that answers more rows per second of occupied time is kept (one row on a tie), then
    checked again."""
    p = BatchPolicy(max_batch=8, max_wait_s=0.005, window=4, keep=3)
    p.calibrate({1: 0.010, 2: 0.006, 4: 0.004, 8: 0.004})
    assert p.limit() == 4
    clock = [0.0]

    def window(rows_per_s: float, company: int = 3) -> None:  # 4 rows, each waited one row's time
        for _ in range(4):
            clock[0] += 1 / rows_per_s
            p.answered([1 / rows_per_s], queued=company, now=clock[0])

    modes = []
    for on, off in [(80, 100), (80, 100)]:  # batching answers fewer rows per second here
        modes.append(p.limit())
        window(on)
        modes.append(p.limit())
        window(off)
    assert modes == [4, 1, 4, 1] and p.limit() == 1 and p.wait() == 0.0
    assert p.decisions[-1] == {"batching_rows_per_s": 80.0, "single_rows_per_s": 100.0, "batching": False}
    for _ in range(3):
        assert p.limit() == 1
        window(100)
    assert p.limit() == 4  # kept for 3 windows, then checked again: now batching is faster
    for _ in range(2):
        window(150)
        window(100)
    assert p.limit() == 4 and p.decisions[-1]["batching"] is True
    for _ in range(3):
        window(150)
    for _ in range(2):  # a tie (within the 2 % margin): rows need not wait for each other
        window(101)
        window(100)
    assert p.limit() == 1 and p.decisions[-1]["batching"] is False
    assert (p.checks, p.kept_batching) == (3, 1)
    clock[0] += 3600.0  # an hour without requests is not occupied time: it does not count against a mode
    for _ in range(3):
        window(100)
    window(150)
    clock[0] += 3600.0
    window(100)
    window(150)
    window(100)
    assert p.decisions[-1] == {"batching_rows_per_s": 150.0, "single_rows_per_s": 100.0, "batching": True}


def closed_loop(policy: BatchPolicy, clients: int, seconds: Callable[[int], float], forwards: int = 2000) -> None:
    """`clients` that each send their next request as soon as the last is answered, served by one forward
    thread whose forward of k rows takes `seconds(k)` (simulated time)."""
    t, queue = 0.0, [0.0] * clients
    for _ in range(forwards):
        k = min(policy.limit(), len(queue))
        took, queue = queue[:k], queue[k:]
        t += seconds(k)
        policy.answered([t - s for s in took], len(queue), t)
        queue += [t] * k


@pytest.mark.parametrize("clients", [2, 8, 64])
@pytest.mark.parametrize("per_row, batching", [(0.009, True), (0.0105, False)])
def test_online_check_finds_the_faster_mode_under_a_deep_queue(clients, per_row, batching):
    """Batches of 4 that cost 10 % less per row than one row (or 5 % more): the check keeps the faster mode
    at every depth. Comparing mean latency instead chose one row per forward at 64 clients in the first case:
    most rows of a window were queued under the window before it (run E's 64 clients)."""
    p = BatchPolicy(max_batch=8, max_wait_s=0.005)
    p.calibrate({1: 0.010, 2: 0.007, 4: 0.006, 8: 0.006})
    closed_loop(p, clients, lambda k: 0.010 if k == 1 else per_row * k)
    assert p.checks >= 3 and all(d["batching"] is batching for d in p.decisions)
    assert p.decisions[-1]["batching_rows_per_s"] == pytest.approx(1 / per_row, abs=0.05)
    assert p.decisions[-1]["single_rows_per_s"] == pytest.approx(100.0, abs=0.05)


def test_online_check_ignores_windows_without_company_and_policies_that_never_batch():
    p = BatchPolicy(max_batch=8, max_wait_s=0.005, window=4, keep=3)
    p.calibrate({1: 0.010, 8: 0.004})
    for i in range(10):  # one client: one-row forwards with nobody queued tell nothing
        p.answered([0.01], queued=0, now=0.01 * (i + 1))
    assert p.checks == 0 and p.limit() == 8
    flat = BatchPolicy(max_batch=8, max_wait_s=0.005, window=4)
    flat.calibrate({1: 0.010, 8: 0.0099})  # never pays: no check, always one row
    for i in range(20):
        flat.answered([0.01] * 4, queued=3, now=0.04 * (i + 1))
    assert flat.checks == 0 and flat.limit() == 1


def test_the_batcher_reports_each_answered_rows_latency_to_its_policy():
    async def main():
        b = MicroBatcher(lambda xs: xs, max_batch=8, max_wait_ms=5)
        await b.start()
        b.policy.calibrate({1: 0.010, 8: 0.004})
        out = await asyncio.gather(*(b.submit(i) for i in range(8)))
        await b.stop()
        return out, b.policy

    out, policy = asyncio.run(main())
    assert out == list(range(8)) and policy._rows == 8 and 0 < policy._latency < 8 * 5.0
    assert 0 < policy._occupied < 5.0 and policy._last_end is not None
