"""Server-Sent Events from a blocking AnswerStream, without blocking the event loop.

``answer_events`` is what ``POST /v1/ask`` with ``"stream": true`` sends::

    event: sources   data: {"passages": [...], "retrieved": n, "no_context": bool, "retrieval_ms": ...,
                            "sent_after_retrieval_ms": ...}
    event: delta     data: {"text": "..."}                        (one per generated piece)
    event: done      data: the AskResponse (answer, citations mapped to sources, timings)
    event: error     data: a problem details object, if generation fails mid-answer (then the stream ends)

Each piece is pulled from the generator in a worker thread. When the client disconnects, Starlette cancels
the response; the ``finally`` closes the stream in a shielded worker call, which stops the generation (an
in-process model stops at its next token) and releases the model's lock for the next request in line.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import anyio.to_thread
import orjson

from esrag.errors import EsragError

_END = object()


def event(name: str | None, data: Any) -> bytes:
    """One SSE event. ``data`` is JSON-encoded (a str is sent as is, e.g. ``[DONE]``)."""
    payload = data if isinstance(data, str) else orjson.dumps(data).decode()
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {payload}\n\n".encode()


def _next(it: Iterator[str]) -> Any:
    try:
        return next(it)
    except StopIteration:
        return _END


async def pieces(stream: Any) -> AsyncIterator[str]:
    """The stream's pieces, each pulled in a worker thread; the stream is closed however this ends."""
    try:
        while True:
            piece = await anyio.to_thread.run_sync(_next, stream)
            if piece is _END:
                return
            yield piece
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(stream.close)


async def answer_events(stream: Any, done: Callable[[Any], dict[str, Any]],
                        failed: Callable[[EsragError], dict[str, Any]]) -> AsyncIterator[bytes]:
    """The SSE events of one answer: sources first (sent before any generation), deltas, then done (the
    ``done(answer)`` document) or error (``failed(error)``, a problem details object)."""
    yield event("sources", {
        "passages": [p.to_dict() for p in stream.passages],
        "retrieved": len(stream.retrieved),
        "no_context": not stream.relevant,
        "retrieval_ms": stream.retrieval_ms,
        # measured as this event is written: the time from retrieval's end to the sources leaving
        "sent_after_retrieval_ms": round(stream.ms_since_retrieval(), 3),
    })
    try:
        async for piece in pieces(stream):
            if piece:
                yield event("delta", {"text": piece})
    except EsragError as e:
        yield event("error", failed(e))
        return
    yield event("done", done(stream.answer))
