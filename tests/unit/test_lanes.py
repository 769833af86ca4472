"""The embedder's two-lane lock and slice pacer (esrag.embedders.lanes), from several threads at once."""

from __future__ import annotations

import threading
import time

from esrag.embedders.lanes import FIRST_SLICE_TOKENS, LaneLock, SlicePacer


def test_slices_follow_the_token_budget_and_the_row_cap() -> None:
    pacer = SlicePacer(max_rows=4, seconds=0.05, first_tokens=100)
    lengths = [60, 30, 20, 20, 20, 20, 10, 10, 10, 10, 10, 10]
    assert pacer.slice_end(lengths, 0) == 1  # 60 tokens: a second row would make 2 x 60 > 100
    assert pacer.slice_end(lengths, 1) == 4  # 3 x 30 <= 100
    assert pacer.slice_end(lengths, 6) == 10  # 10 x 10 fits, but at most 4 rows
    assert SlicePacer(max_rows=8, first_tokens=10).slice_end([500], 0) == 1  # one row always goes
    assert pacer.slice_end(lengths, 0, fine=False) == 4  # no query about: whole batches


def test_bulk_work_is_sliced_only_while_queries_are_about() -> None:
    lock = LaneLock()
    assert not lock.queries_about()
    with lock.hold(urgent=False):
        pass
    assert not lock.queries_about()
    with lock.hold(urgent=True):
        pass
    assert lock.queries_about() and not lock.queries_about(within_s=0.0)


def test_the_pacer_learns_the_models_cost_per_token() -> None:
    pacer = SlicePacer(max_rows=1000, seconds=0.05)
    assert pacer.budget_tokens == FIRST_SLICE_TOKENS
    for _ in range(30):
        pacer.observe(1000, 0.1)  # 0.1 ms per padded token
    assert abs(pacer.budget_tokens - 500) < 1  # 50 ms of it
    pacer.observe(0, 1.0)  # nothing measured: ignored
    assert abs(pacer.budget_tokens - 500) < 1


def test_the_lock_excludes_and_every_holder_gets_it_from_many_threads() -> None:
    lock = LaneLock()
    inside = [0]
    worst = [0]
    done = [0]
    guard = threading.Lock()

    def work(urgent: bool) -> None:
        for _ in range(200):
            with lock.hold(urgent):
                with guard:
                    inside[0] += 1
                    worst[0] = max(worst[0], inside[0])
                time.sleep(0)
                with guard:
                    inside[0] -= 1
                    done[0] += 1

    threads = [threading.Thread(target=work, args=(i % 2 == 0,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert worst[0] == 1
    assert done[0] == 8 * 200


def _queue_up(lock: LaneLock, order: list[str], name: str, urgent: bool) -> threading.Thread:
    def run() -> None:
        with lock.hold(urgent):
            order.append(name)

    t = threading.Thread(target=run)
    t.start()
    return t


def _wait_for(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.001)


def test_a_waiting_query_goes_before_waiting_bulk_work() -> None:
    lock = LaneLock()
    order: list[str] = []
    with lock.hold(urgent=False):  # bulk work holds the model
        bulk = _queue_up(lock, order, "bulk", urgent=False)
        _wait_for(lambda: lock._bulk_waiting == 1)
        query = _queue_up(lock, order, "query", urgent=True)
        _wait_for(lambda: lock._urgent_waiting == 1)
    bulk.join(5)
    query.join(5)
    assert order == ["query", "bulk"]


def test_bulk_work_is_not_starved_by_a_stream_of_queries() -> None:
    lock = LaneLock(max_urgent_streak=3)
    order: list[str] = []
    stop = threading.Event()

    def queries() -> None:
        while not stop.is_set():
            with lock.hold(urgent=True):
                order.append("q")
                time.sleep(0.001)

    runners = [threading.Thread(target=queries) for _ in range(3)]
    for t in runners:
        t.start()
    _wait_for(lambda: len(order) >= 10)
    bulk = _queue_up(lock, order, "bulk", urgent=False)
    _wait_for(lambda: lock._bulk_waiting == 1 or "bulk" in order)
    queued_at = len(order)
    bulk.join(5)
    stop.set()
    for t in runners:
        t.join(5)
    assert "bulk" in order
    # after it queued, at most the holder's query and max_urgent_streak more ran before it
    assert order.index("bulk") - queued_at <= 1 + 3
