"""The embedding stream of the ingest (esrag.embedders.inflight.Stream): requests of consecutive windows share
one pool, windows come back whole and in submission order, a failed request fails only its own texts (in
whichever window), and what is open at once is bounded exactly (``ahead`` windows, ``in_flight`` requests)."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from esrag.embedders import inflight
from esrag.errors import EmbeddingError


class FakeServer:
    """``embed`` answers [len(text), 1] per text after an optional delay; records the most calls at once,
    the order calls started in, and fails calls holding a text of ``fail_on`` (EmbeddingError) or ``crash_on``
    (ValueError)."""

    def __init__(self, delay: Callable[[], float] = lambda: 0.0, fail_on: set[str] | None = None,
                 crash_on: set[str] | None = None) -> None:
        self.delay = delay
        self.fail_on = fail_on or set()
        self.crash_on = crash_on or set()
        self.active = 0
        self.most = 0
        self.started: list[list[str]] = []
        self.lock = threading.Lock()
        self.on_start: Callable[[list[str]], None] = lambda texts: None

    def embed(self, texts: list[str]) -> np.ndarray:
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
            self.started.append(list(texts))
        try:
            self.on_start(texts)
            time.sleep(self.delay())
            if self.fail_on & set(texts):
                raise EmbeddingError("server down")
            if self.crash_on & set(texts):
                raise ValueError("a bug")
            return np.array([[float(len(t)), 1.0] for t in texts], dtype=np.float32)
        finally:
            with self.lock:
                self.active -= 1


def window(k: int, n: int = 7) -> list[str]:
    """Window k: n texts of distinct lengths, tagged with k."""
    return [f"w{k:02d}:" + "x" * j for j in range(1, n + 1)]


def check(texts: list[str], result: inflight.WindowResult, failed: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    for text, vec in zip(texts, result.vectors, strict=True):
        assert (vec is None) == (text in failed)
        assert vec is None or vec[0] == len(text)


def test_requests_are_cut_longest_first() -> None:
    assert inflight.requests(["a", "bbb", "cc", "dddd", "e"], 2) == [[3, 1], [2, 0], [4]]
    assert inflight.requests([], 3) == []


@pytest.mark.parametrize("in_flight", [1, 3])
def test_windows_come_back_whole_and_in_submission_order(in_flight: int) -> None:
    rng = random.Random(7)
    server = FakeServer(delay=lambda: rng.random() * 0.01)
    windows = {k: window(k, n=rng.randint(0, 9)) for k in range(12)}  # empty windows too
    got: list[tuple[int, inflight.WindowResult]] = []
    with inflight.Stream[int](server.embed, 2, in_flight, threading.Event()) as stream:
        for k, texts in windows.items():
            got += stream.submit(texts, k)
        got += list(stream.drain())
        assert stream.open_windows == 0
    assert [k for k, _ in got] == list(windows)
    for k, result in got:
        check(windows[k], result)
    assert server.most == in_flight


@pytest.mark.parametrize("ahead", [0, 1, 2])
def test_at_most_ahead_windows_stay_open_and_what_is_held_is_bounded(ahead: int) -> None:
    stream: inflight.Stream[int]
    held: list[int] = []
    server = FakeServer()
    server.on_start = lambda texts: held.append(stream.held)  # seen from the request threads
    size = 5
    with inflight.Stream[int](server.embed, 2, 2, threading.Event(), ahead=ahead) as stream:
        for k in range(10):
            returned = [tag for tag, _ in stream.submit(window(k, size), k)]
            # exactly the windows beyond `ahead`, oldest first
            assert returned == ([k - ahead] if k >= ahead else [])
            assert stream.open_windows == min(k + 1, ahead)
            assert stream.held == size * min(k + 1, ahead)
        assert [tag for tag, _ in stream.drain()] == list(range(10 - ahead, 10))
    assert held and max(held) <= size * (ahead + 1)
    assert server.most <= 2


def test_windows_without_texts_come_back_in_their_turn_and_do_not_count_as_ahead() -> None:
    server = FakeServer()
    with inflight.Stream[str](server.embed, 3, 1, threading.Event(), ahead=1) as stream:
        assert [t for t, _ in stream.submit([], "e0")] == ["e0"]  # nothing before it: back at once
        assert stream.submit(window(1), "w1") == []
        assert stream.submit([], "e2") == [] and stream.submit([], "e3") == []  # behind w1, not ahead of it
        assert stream.open_windows == 3 and stream.held == 7
        assert [t for t, _ in stream.submit(window(4), "w4")] == ["w1", "e2", "e3"]
        assert stream.open_windows == 1
        # a run of windows without texts behind a busy one is capped: past the cap, the busy one is waited for
        for k in range(inflight.IDLE_CAP + 1):
            assert stream.submit([], f"idle{k}") == []
        assert stream.open_windows == 1 + 1 + inflight.IDLE_CAP
        last = f"idle{inflight.IDLE_CAP + 1}"
        back = [t for t, _ in stream.submit([], last)]
        assert back == ["w4", *(f"idle{k}" for k in range(inflight.IDLE_CAP + 1)), last]
        assert stream.open_windows == 0 and list(stream.drain()) == []


def test_the_next_windows_requests_run_while_the_previous_window_is_handed_on() -> None:
    next_started = threading.Event()
    server = FakeServer()
    server.on_start = lambda texts: next_started.set() if texts[0].startswith("w01") else None
    with inflight.Stream[int](server.embed, 3, 1, threading.Event()) as stream:
        assert stream.submit(window(0), 0) == []
        (tag, result), = stream.submit(window(1), 1)
        assert tag == 0
        check(window(0), result)
        # window 0 is now the caller's to write; window 1's first request starts without another call
        assert next_started.wait(10)
        (tag, result), = stream.drain()
        assert tag == 1
        check(window(1), result)


def test_a_failed_request_of_the_next_window_fails_only_its_texts() -> None:
    bad = window(1)[-1]  # the longest text of window 1: its first request, texts 7, 6, 5
    server = FakeServer(fail_on={bad})
    with inflight.Stream[int](server.embed, 3, 2, threading.Event()) as stream:
        got = stream.submit(window(0), 0) + stream.submit(window(1), 1) + stream.submit(window(2), 2)
        got += list(stream.drain())
    results = dict(got)
    check(window(0), results[0])
    check(window(2), results[2])
    check(window(1), results[1], failed=set(window(1)[4:]))
    ((idx, err),) = results[1].failed
    assert sorted(idx) == [4, 5, 6] and "server down" in str(err)
    assert not results[0].failed and not results[2].failed


def test_another_exception_is_raised_after_every_earlier_window_came_back() -> None:
    server = FakeServer(crash_on={window(1)[0]})
    with inflight.Stream[int](server.embed, 3, 2, threading.Event()) as stream:
        assert stream.submit(window(0), 0) == []
        (tag, result), = stream.submit(window(1), 1)
        assert tag == 0
        check(window(0), result)
        with pytest.raises(ValueError, match="a bug"):
            list(stream.drain())


def test_stop_ends_waiting_and_close_cancels_the_queued_requests() -> None:
    stop = threading.Event()
    gate = threading.Event()
    server = FakeServer()
    server.on_start = lambda texts: gate.wait(10)
    stream = inflight.Stream[int](server.embed, 1, 1, stop, ahead=5)
    for k in range(3):
        assert stream.submit(window(k), k) == []
    stop.set()
    assert list(stream.drain()) == []
    gate.set()
    stream.close()
    assert len(server.started) <= 1  # the one running when stop was set; the rest were never sent
    with pytest.raises(RuntimeError, match="closed"):
        stream.submit(["late"], 9)


def test_two_threads_submitting_to_one_stream_get_every_window_once_and_whole() -> None:
    server = FakeServer(delay=lambda: 0.001)
    got: list[tuple[int, inflight.WindowResult]] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    with inflight.Stream[int](server.embed, 2, 3, threading.Event()) as stream:

        def feed(first: int) -> None:
            try:
                for k in range(first, first + 20):
                    done = stream.submit(window(k), k)
                    with lock:
                        got.extend(done)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=feed, args=(first,)) for first in (0, 100)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        got += list(stream.drain())
    assert not errors
    assert sorted(k for k, _ in got) == [*range(20), *range(100, 120)]
    for k, result in got:
        check(window(k), result)
    assert server.most <= 3


def test_the_sizes_are_asked_only_once_there_is_something_to_embed() -> None:
    asked: list[str] = []
    server = FakeServer()

    def size(name: str, value: int) -> Callable[[], int]:
        return lambda: asked.append(name) or value  # type: ignore[func-returns-value]

    with inflight.Stream[int](server.embed, size("batch", 2), size("in_flight", 2), threading.Event()) as stream:
        got = stream.submit([], 0) + stream.submit([], 1)
        assert [k for k, _ in got] == [0, 1] and asked == [] and server.started == []
        got = stream.submit(window(2, 5), 2) + list(stream.drain())
    assert [k for k, _ in got] == [2] and sorted(asked) == ["batch", "in_flight"]
    assert [len(t) for t in server.started] == [2, 2, 1]
