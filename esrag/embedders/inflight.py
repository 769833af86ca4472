"""Keeping several embedding requests in flight during an ingest, without changing what gets written.

The ingest hands one window of chunk texts at a time (``Ingestor._embed_window``). ``embed_window`` sorts
them longest first (so each request pads little), cuts them into requests of the embedder's batch size and
runs up to ``in_flight`` of them at once, in threads: a pool of embedding servers, or one server that
batches dynamically, stays busy while a request is on the wire. Each vector lands at its text's position,
so the writes that follow happen in the same order as with one request at a time.

A request that fails with an EmbeddingError (the server refused, timed out, or died) fails only its own
texts: ``WindowResult.failed`` lists their positions with the error, and the other requests go on. Any
other exception (a bug, a missing tokenizer) is raised, as before. Once ``stop`` is set, requests not yet
started are cancelled.

An embedder says how many requests it wants in flight with an ``in_flight`` attribute (the remote ones);
one without it (the in-process model, which runs one batch at a time anyway) gets one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from esrag.errors import EmbeddingError


@dataclass
class WindowResult:
    """``vectors[i]`` is text i's vector, None when its request failed; ``failed`` holds each failed
    request's positions and error."""

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


def embed_window(embed: Callable[[list[str]], np.ndarray], texts: Sequence[str], batch: int, in_flight: int,
                 stop: threading.Event) -> WindowResult:
    """Embed ``texts`` with ``embed`` (one call per request of at most ``batch`` texts, up to ``in_flight``
    at once); see the module docstring."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    batches = [order[lo:lo + batch] for lo in range(0, len(order), max(1, batch))]
    result = WindowResult([None] * len(texts))

    def run(idx: list[int]) -> np.ndarray:
        return embed([texts[i] for i in idx])

    def take(idx: list[int], future_or_call: Future[np.ndarray] | Callable[[], np.ndarray]) -> None:
        try:
            vectors = future_or_call.result() if isinstance(future_or_call, Future) else future_or_call()
        except EmbeddingError as e:
            result.failed.append((idx, e))
            return
        for i, vec in zip(idx, vectors, strict=True):
            result.vectors[i] = vec

    if in_flight <= 1 or len(batches) <= 1:
        for idx in batches:
            if stop.is_set():
                break
            take(idx, lambda idx=idx: run(idx))  # type: ignore[misc]
        return result
    with ThreadPoolExecutor(max_workers=min(in_flight, len(batches)), thread_name_prefix="esrag-embed") as pool:
        futures = [(idx, pool.submit(run, idx)) for idx in batches]
        try:
            for idx, future in futures:
                if stop.is_set():
                    break
                take(idx, future)
        finally:
            for _, future in futures:
                future.cancel()
    return result
