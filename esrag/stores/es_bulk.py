"""Writing to Elasticsearch with ``_bulk``: index and delete actions in one stream, with retries, and every
item accounted for.

Actions are sent in requests of at most ``BULK_CHUNK_SIZE`` items or ``BULK_MAX_BYTES`` bytes, streamed
from the input (memory holds one request). Per request:

- items answered 429 or 503 (or 502/504) are sent again, alone, after a backoff;
- a whole request answered 429/502/503/504, or lost to a connection error or a timeout, is sent again
  whole (re-sending is safe: index actions are upserts by content-addressed id, deletes are by id);
- waits follow the store's ``RetryPolicy`` (exponential, jittered, bounded by ``es_retry_seconds`` without
  progress); when it is spent the items still pending become WriteErrors saying why;
- any other item failure (a mapping error, a wrong vector size) is final at once: a WriteError with the
  item's source file, ES's reason and status;
- a missing index, or a 401/403, raises: the store is unusable, retrying would not help.

A delete answered 404 (the chunk was already gone) is not an error; ``deleted`` counts the deletes that
removed something. No request refreshes the index.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from elasticsearch import ApiError, AuthenticationException, AuthorizationException, Elasticsearch

from esrag.errors import StoreError
from esrag.stores import es_queries as q
from esrag.stores.es_client import (
    RETRY_STATUSES,
    ErrorTranslator,
    RetryPolicy,
    error_reason,
    error_type,
    is_retryable,
    retry_after_s,
)
from esrag.types import EmbeddedChunk, WriteError, WriteResult

log = logging.getLogger("esrag.stores.elasticsearch")

#: Items per ``_bulk`` request, and bytes per request (whichever comes first).
BULK_CHUNK_SIZE = 500
BULK_MAX_BYTES = 16 * 1024 * 1024
#: ``filter_path`` of a bulk response: only what the accounting reads.
BULK_FILTER_PATH = "errors,items.*.status,items.*.result,items.*.error"


@dataclass(frozen=True)
class _Item:
    """One bulk action, serialised: ``op`` is "index" or "delete"; ``source`` the file of an index action
    (for error reports), "" for a delete."""

    op: str
    id: str
    source: str
    payload: bytes


@dataclass
class BulkStats:
    """Counters of one store's bulk traffic since it was made, for logs, benchmarks and tests."""

    requests: int = 0
    retried_requests: int = 0
    retried_items: int = 0
    wait_s: float = 0.0


def _items(index: str, chunks: Iterable[EmbeddedChunk], delete_ids: Sequence[str], require_alias: bool,
           written_ids: set[str]) -> Iterator[_Item]:
    """Index actions for ``chunks``, then delete actions for ``delete_ids`` (minus ids just written, so a
    chunk is never deleted by the call that wrote it)."""
    for action in q.bulk_actions(index, chunks, require_alias=require_alias):
        source = action.pop("_source")
        header: dict[str, Any] = {"_index": action["_index"], "_id": action["_id"]}
        if require_alias:
            header["require_alias"] = True
        written_ids.add(action["_id"])
        payload = orjson.dumps({"index": header}) + b"\n" + orjson.dumps(source) + b"\n"
        yield _Item("index", action["_id"], str(source.get("source", "")), payload)
    for chunk_id in dict.fromkeys(delete_ids):
        if chunk_id in written_ids:
            continue
        yield _Item("delete", chunk_id, "", orjson.dumps({"delete": {"_index": index, "_id": chunk_id}}) + b"\n")


def _batches(items: Iterator[_Item], size: int, max_bytes: int) -> Iterator[list[_Item]]:
    batch: list[_Item] = []
    nbytes = 0
    for item in items:
        if batch and (len(batch) >= size or nbytes + len(item.payload) > max_bytes):
            yield batch
            batch, nbytes = [], 0
        batch.append(item)
        nbytes += len(item.payload)
    if batch:
        yield batch


class BulkWriter:
    """Runs one ``Store.write`` call as a stream of ``_bulk`` requests (see the module docstring)."""

    def __init__(self, client: Elasticsearch, errors: ErrorTranslator, policy: RetryPolicy,
                 stats: BulkStats, timeout: float) -> None:
        self.client = client.options(max_retries=0, request_timeout=timeout)
        self.errors = errors
        self.policy = policy
        self.stats = stats
        self.written = 0
        self.deleted = 0
        self.failed: list[WriteError] = []

    def run(self, index: str, chunks: Iterable[EmbeddedChunk], delete_ids: Sequence[str],
            require_alias: bool) -> WriteResult:
        written_ids: set[str] = set()
        items = _items(index, chunks, delete_ids, require_alias, written_ids)
        for batch in _batches(items, BULK_CHUNK_SIZE, BULK_MAX_BYTES):
            self._send(batch)
        return WriteResult(written=self.written, errors=tuple(self.failed), deleted=self.deleted)

    def _fail(self, items: Iterable[_Item], reason: str, status: int | None) -> None:
        for it in items:
            what = reason if it.op == "index" else f"delete failed: {reason}"
            self.failed.append(WriteError(it.id, it.source, what, status))

    def _send(self, batch: list[_Item]) -> None:
        """Send ``batch`` until every item is written, deleted or failed."""
        pending = batch
        attempt = 0
        while pending:
            self.stats.requests += 1
            retry_after: float | None = None
            try:
                ops: Any = [it.payload for it in pending]  # pre-serialised NDJSON lines, sent as they are
                resp = self.client.bulk(operations=ops, filter_path=BULK_FILTER_PATH)
            except (AuthenticationException, AuthorizationException) as e:
                raise self.errors.translate(e, "writing chunks") from e
            except ApiError as e:
                if e.meta.status == 404 and error_type(e.body) == "index_not_found_exception":
                    raise self.errors.missing() from e
                if not is_retryable(e):
                    self._fail(pending, self.errors.reason(e), e.meta.status)
                    return
                retry, why, status = pending, self.errors.reason(e), e.meta.status
                retry_after = retry_after_s(e)
            except Exception as e:  # transport errors: connection refused/reset, timeout
                if not is_retryable(e):
                    raise self.errors.translate(e, "writing chunks") from e
                retry, why, status = pending, self.errors.reason(e), None
            else:
                retry, why, status = self._account(pending, resp.body)
            if not retry:
                return
            waited = self.policy.wait(attempt, retry_after)
            if waited is None:
                budget = self.policy.budget_s
                self._fail(retry, f"{why}; gave up after retrying for {budget:g} s (es_retry_seconds)", status)
                log.warning("Elasticsearch at %s: %d chunk(s) not written: %s", self.errors.location,
                            len(retry), why)
                return
            self.stats.retried_requests += 1
            self.stats.retried_items += len(retry)
            self.stats.wait_s += waited
            level = logging.WARNING if attempt == 0 else logging.INFO
            log.log(level, "Elasticsearch at %s: %s; retrying %d item(s) in %.1f s (attempt %d)",
                    self.errors.location, why, len(retry), waited, attempt + 2)
            attempt += 1
            pending = retry

    def _account(self, pending: list[_Item], body: Any) -> tuple[list[_Item], str, int | None]:
        """Count the items of one bulk response; returns the items to retry, a reason and a status."""
        results = body.get("items") if isinstance(body, dict) else None
        if not isinstance(results, list) or len(results) != len(pending):
            raise StoreError(
                f"Elasticsearch at {self.errors.location} answered a bulk request of {len(pending)} items with "
                f"{len(results) if isinstance(results, list) else 'no'} item results"
            )
        retry: list[_Item] = []
        why, why_status = "", None
        progress = False
        for it, result in zip(pending, results, strict=True):
            info = next(iter(result.values())) if isinstance(result, dict) and result else {}
            status = info.get("status")
            code = status if isinstance(status, int) else None
            if code is not None and code < 300:
                progress = True
                if it.op == "index":
                    self.written += 1
                elif info.get("result") == "deleted":
                    self.deleted += 1
                continue
            if it.op == "delete" and code == 404 and "error" not in info:
                progress = True  # already gone
                continue
            err = info.get("error")
            reason = error_reason({"error": err}) if err is not None else f"HTTP {code}"
            reason = self.errors.clean(reason)
            if code in RETRY_STATUSES:
                retry.append(it)
                why, why_status = why or f"HTTP {code} for some items: {reason}", why_status or code
            else:
                self._fail([it], reason, code)
        if progress:
            self.policy.progress()
        return retry, why, why_status
