"""Keeping the embedder busy during an ingest, without changing what gets written or in which order.

The ingest hands windows of chunk texts to one ``Stream`` (``Ingestor._run``). Each window's texts are
sorted longest first (so each request pads little) and cut into requests of the embedder's batch size; all
requests, of every window, go through one pool of ``in_flight`` threads that lives as long as the stream,
in submission order. So:

- at most ``in_flight`` requests are out at once, whichever windows they belong to;
- a window's requests queue right behind the previous window's, and the server never waits while the
  ingest writes a window, reads the source or chunks: window N+1 is submitted before window N is handed
  to the writer (with one request in flight, its first request starts the moment window N's last ends);
- windows come back (``submit``'s answer, ``drain``) whole and in submission order, each vector at its
  text's position, so the writes that follow happen in the same order as with one request at a time;
- at most ``ahead + 1`` windows holding texts are open (submitted, not yet returned) at once, so what is
  embedded but not handed on is bounded by that many windows (``held`` counts their texts); a window
  without texts (progress only) waits behind them, ``IDLE_CAP`` of those at most, and comes back as soon
  as every window before it has.

A request that fails with an EmbeddingError (the server refused, timed out, or died) fails only its own
texts: ``WindowResult.failed`` lists their positions with the error; the other requests, of that window and
the next, go on. Any other exception (a bug, a missing tokenizer) is raised by the call that returns its
window, after every earlier window was returned. Once ``stop`` is set, requests not yet started do nothing,
a window being waited for comes back with what it has, and ``close`` cancels what is queued.

An embedder says how many requests it wants in flight with an ``in_flight`` attribute (the remote ones);
one without it (the in-process model, which runs one batch at a time anyway) gets one. Thread-safe: two
threads may submit to one stream at once; each window then comes back exactly once and whole, to one of
them (the ingest submits from one thread only).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Generic, TypeVar

import numpy as np

from esrag.errors import EmbeddingError

T = TypeVar("T")
#: windows without texts (progress only, or every vector reused) kept open behind the busy ones
IDLE_CAP = 16


@dataclass
class WindowResult:
    """``vectors[i]`` is text i's vector, None when its request failed (or was not made: ``stop``);
    ``failed`` holds each failed request's positions and error."""

    vectors: list[np.ndarray | None]
    failed: list[tuple[list[int], EmbeddingError]] = field(default_factory=list)

    @property
    def embedded(self) -> int:
        return sum(v is not None for v in self.vectors)


def requests_in_flight(embedder: object) -> int:
    """The embedder's ``in_flight`` (at least 1), or 1 when it has none."""
    value = getattr(embedder, "in_flight", 1)
    return max(1, value) if isinstance(value, int) else 1


def request_size(embedder: object, default: int) -> int:
    """Texts per request: a remote embedder's ``batch_size`` (its server's limit), else ``default``."""
    value = getattr(embedder, "batch_size", None) if requests_in_flight(embedder) > 1 else None
    return max(1, value) if isinstance(value, int) else max(1, default)


def requests(texts: Sequence[str], batch: int) -> list[list[int]]:
    """The positions of ``texts`` cut into requests of at most ``batch``, longest texts first (ties in
    position order)."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    return [order[lo:lo + batch] for lo in range(0, len(order), max(1, batch))]


@dataclass
class _Window(Generic[T]):
    tag: T
    size: int
    futures: list[tuple[list[int], Future[np.ndarray | None]]]


class Stream(Generic[T]):
    """Windows of texts embedded through one pool of ``in_flight`` request threads (see the module
    docstring). ``submit`` a window with a ``tag`` (what the caller needs to hand it on); get the windows
    back, oldest first, from ``submit`` (which keeps at most ``ahead`` windows open after it returns) and
    ``drain``. Use as a context manager, or ``close`` it."""

    def __init__(self, embed: Callable[[list[str]], np.ndarray], batch: int | Callable[[], int],
                 in_flight: int | Callable[[], int], stop: threading.Event, ahead: int = 1) -> None:
        """``batch`` and ``in_flight`` may be functions, called on the first window that holds texts: a run
        that embeds nothing never asks (for a lazily loaded embedder, asking loads it)."""
        self._embed = embed
        self._sizing = (batch, in_flight)
        self.ahead = max(0, ahead)
        self._stop = stop
        self._pool: ThreadPoolExecutor | None = None
        self._open: deque[_Window[T]] = deque()
        self._lock = threading.Lock()  # submission order = queue order = return order
        self._closed = False

    @property
    def open_windows(self) -> int:
        """Windows submitted and not yet returned."""
        with self._lock:
            return len(self._open)

    @property
    def held(self) -> int:
        """Texts of the open windows: an upper bound on the vectors embedded and not yet returned."""
        with self._lock:
            return sum(w.size for w in self._open)

    def submit(self, texts: Sequence[str], tag: T) -> list[tuple[T, WindowResult]]:
        """Queue the requests of one window (an empty one too: it comes back in its turn), then wait for and
        return the oldest windows, in order, until at most ``ahead`` open windows hold texts (see the module
        docstring)."""
        texts = list(texts)
        with self._lock:
            if self._closed:
                raise RuntimeError("the embedding stream is closed")
            futures = []
            if texts:
                pool, batch = self._started()
                futures = [(idx, pool.submit(self._run, [texts[i] for i in idx])) for idx in requests(texts, batch)]
            self._open.append(_Window(tag, len(texts), futures))
        done: list[tuple[T, WindowResult]] = []
        while self._over_bound():
            got = self._next()
            if got is None:
                break
            done.append(got)
        return done

    def drain(self) -> Iterator[tuple[T, WindowResult]]:
        """The remaining open windows, oldest first, each as soon as it is complete (stops once ``stop`` is
        set)."""
        while not self._stop.is_set():
            got = self._next()
            if got is None:
                return
            yield got

    def close(self) -> None:
        """Cancel the queued requests and wait for the running ones (each ends within the embedder's
        timeout). Open windows are dropped."""
        with self._lock:
            self._closed = True
            self._open.clear()
            pool = self._pool
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Stream[T]:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------------------

    def _started(self) -> tuple[ThreadPoolExecutor, int]:
        """The request pool, started on first use, and the batch size (called under the lock)."""
        batch, in_flight = (v() if callable(v) else v for v in self._sizing)
        self._sizing = (max(1, batch), max(1, in_flight))
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self._sizing[1], thread_name_prefix="esrag-embed")
        return self._pool, self._sizing[0]

    def _over_bound(self) -> bool:
        """Whether the oldest open window must be returned now: more than ``ahead`` open windows hold texts,
        more than ``ahead + 1 + IDLE_CAP`` are open, or the oldest holds no text (it is complete)."""
        with self._lock:
            busy = sum(1 for w in self._open if w.size)
            return bool(self._open) and (busy > self.ahead or len(self._open) > self.ahead + 1 + IDLE_CAP
                                         or self._open[0].size == 0)

    def _run(self, texts: list[str]) -> np.ndarray | None:
        return None if self._stop.is_set() else self._embed(texts)

    def _next(self) -> tuple[T, WindowResult] | None:
        """Wait for the oldest open window; None when there is none. Raises what a request raised other
        than an EmbeddingError (the window stays returned: the caller aborts)."""
        with self._lock:
            if not self._open:
                return None
            window = self._open.popleft()
        result = WindowResult([None] * window.size)
        for idx, future in window.futures:
            if self._stop.is_set():
                break
            try:
                vectors = future.result()
            except EmbeddingError as e:
                result.failed.append((idx, e))
                continue
            except CancelledError:
                break
            if vectors is None:  # stopped before it started
                continue
            for i, vec in zip(idx, vectors, strict=True):
                result.vectors[i] = vec
        return window.tag, result


def embed_window(embed: Callable[[list[str]], np.ndarray], texts: Sequence[str], batch: int, in_flight: int,
                 stop: threading.Event) -> WindowResult:
    """Embed one window of ``texts`` with ``embed`` (one call per request of at most ``batch`` texts, up to
    ``in_flight`` at once) and wait for it; see the module docstring."""
    with Stream[None](embed, batch, in_flight, stop, ahead=0) as stream:
        ((_, result),) = stream.submit(texts, None)
    return result
