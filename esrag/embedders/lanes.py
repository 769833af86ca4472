"""Sharing one model between queries and bulk work: a two-lane lock and slices of bounded duration.

A model that runs one batch at a time (``esrag.embedders.sentence_transformers``) is shared by searches,
whose caller waits on one short query, and by bulk work (an ingest's chunks, the sentences the extractive
answerer ranks), which may take seconds. Two rules keep a query from waiting behind that bulk work:

- ``LaneLock``: the lock the model is held under. An *urgent* holder (a query) goes before every waiting
  bulk holder; bulk work gets the model when no query waits, and after ``MAX_URGENT_STREAK`` queries in a
  row while bulk work waits (so a steady stream of searches slows an ingest down but never stops it).
- ``SlicePacer``: while queries are about (one was served in the last ``QUERIES_RECENT_S``), bulk work is
  cut into slices that hold the model about ``SLICE_SECONDS`` each, the lock taken per slice. The pacer
  learns the model's cost per padded token from the slices it times, so a slice is a few sentences on a
  CPU and a whole batch on a GPU. A query therefore waits at most about one slice, whatever the size of
  the bulk call. Without queries about (``esrag ingest`` on its own), bulk work runs in whole batches, as
  fast as before: slicing costs a model call's fixed overhead per slice.

Both are thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

#: how long one slice of bulk work should hold the model, in seconds (the longest a query waits for it)
SLICE_SECONDS = 0.025
#: padded tokens in a slice before the pacer has timed one (a few short sentences, one long chunk)
FIRST_SLICE_TOKENS = 256
#: urgent holders served in a row while bulk work waits, before one bulk slice goes
MAX_URGENT_STREAK = 4
#: bulk work is sliced while a query was served this recently (seconds)
QUERIES_RECENT_S = 10.0
#: weight of the newest timing in the pacer's running estimate
_EMA = 0.3


class LaneLock:
    """A mutex with an urgent lane and a bulk lane (see the module docstring). Not reentrant."""

    def __init__(self, max_urgent_streak: int = MAX_URGENT_STREAK) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._held = False
        self._urgent_waiting = 0
        self._bulk_waiting = 0
        self._streak = 0
        self._max_streak = max(1, max_urgent_streak)
        self._last_urgent = -float("inf")  # time.monotonic() of the last urgent request

    def queries_about(self, within_s: float = QUERIES_RECENT_S) -> bool:
        """Whether an urgent holder asked for the lock in the last ``within_s`` seconds."""
        return time.monotonic() - self._last_urgent < within_s

    def _may_take(self, urgent: bool) -> bool:
        if self._held:
            return False
        bulk_due = self._bulk_waiting > 0 and self._streak >= self._max_streak
        return not bulk_due if urgent else (self._urgent_waiting == 0 or bulk_due)

    @contextmanager
    def hold(self, urgent: bool) -> Iterator[None]:
        """Hold the lock for the ``with`` block, in the urgent lane or the bulk lane."""
        with self._cond:
            if urgent:
                self._last_urgent = time.monotonic()
                self._urgent_waiting += 1
            else:
                self._bulk_waiting += 1
            try:
                while not self._may_take(urgent):
                    self._cond.wait()
            finally:
                if urgent:
                    self._urgent_waiting -= 1
                else:
                    self._bulk_waiting -= 1
            self._held = True
            self._streak = self._streak + 1 if urgent else 0
        try:
            yield
        finally:
            with self._cond:
                self._held = False
                self._cond.notify_all()


class SlicePacer:
    """Cuts a call's texts into slices of about ``seconds`` of model time each (see the module docstring).

    ``slice_end(lengths, start)`` says where the next slice ends, for texts sorted longest first (their
    padded token lengths); ``observe(tokens, seconds)`` records how long a slice of that many padded tokens
    (rows x its longest row) took. Read and written from several threads: a stale estimate only makes one
    slice a little longer or shorter.
    """

    def __init__(self, max_rows: int, seconds: float | None = None,
                 first_tokens: int = FIRST_SLICE_TOKENS) -> None:
        self.max_rows = max(1, max_rows)
        self.seconds = SLICE_SECONDS if seconds is None else seconds
        self.first_tokens = first_tokens
        self._per_token: float | None = None  # seconds per padded token, a running estimate

    @property
    def budget_tokens(self) -> float:
        """Padded tokens one slice may hold now."""
        per = self._per_token
        return float(self.first_tokens) if per is None or per <= 0 else self.seconds / per

    def observe(self, tokens: int, seconds: float) -> None:
        if tokens <= 0 or seconds <= 0:
            return
        per = seconds / tokens
        old = self._per_token
        self._per_token = per if old is None else (1 - _EMA) * old + _EMA * per

    def slice_end(self, lengths: Sequence[int], start: int, fine: bool = True) -> int:
        """Where the slice beginning at ``start`` ends (exclusive), in ``lengths`` sorted longest first: at
        most ``max_rows`` rows and, when ``fine``, at most ``budget_tokens`` padded tokens (rows x its
        first, longest, row), but always at least one row. Asked slice by slice, so the later slices of a
        call use what the earlier ones measured."""
        longest = max(1, lengths[start])
        rows = self.max_rows if not fine else max(1, min(self.max_rows, int(self.budget_tokens // longest)))
        return min(len(lengths), start + rows)
