"""The copy of one version of an Elasticsearch index into another inside the server (``POST _reindex``):
the copy-only reindex (a new analyzer, index options or mapping; the chunks and vectors unchanged) without
pulling every vector through the client as JSON and sending it back through ``_bulk``.

- **The request** (``reindex_body``, pure): from the live concrete index, its stored fields only
  (``COPY_FIELDS``: what ``iter_chunks`` reads, and ``ingested_at``; anything else a foreign writer put in
  ``_source`` is left out, so the new version's strict mapping never refuses a chunk for it), into the new
  version's concrete index, ``conflicts=abort``, ``slices=auto`` (one slice per shard on a cluster; one
  here, as esrag indices have one shard), ``wait_for_completion=false``. Each chunk's ``_source`` is copied
  as it was stored, ``ingested_at`` included (a copy ingests nothing), and a chunk stored without a vector
  stays without one (found by BM25 only, as before). The recorded model and fingerprint are the new
  version's mapping ``_meta``, written when it was created.
- **Progress** comes from the task (``GET _tasks/<id>``: created and updated of total), polled every
  ``poll_s``. A server that runs the whole copy within the request instead (noida-db, the single-process
  ES-compatible server of the tests, answers with a task id only once the copy is over, and keeps no
  record of it) is watched through the new version's ``_count`` while the request runs.
- **Failures**: the task's ``failures`` or ``error``, a request refused, or a connection lost raise
  StoreError naming both indices and the first reason; a task still running is cancelled. Where the server
  kept no record of the task, its outcome is what the new version holds: the reindex checks the counts
  (and that the index is still the one it created) before any swap.
- **A reindex killed during the copy** leaves the task running on a cluster: the next reindex's cleanup
  cancels the copies into versions of the index (``copies_into``) before it deletes the half-built one.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from elastic_transport import TransportError
from elasticsearch import ApiError

from esrag.errors import EsragError, StoreError
from esrag.stores import es_queries as q
from esrag.stores.base import CopyResult

if TYPE_CHECKING:
    from esrag.stores.elasticsearch import ElasticsearchStore

#: The ``_source`` fields a server-side copy carries over: everything esrag stores on a chunk.
COPY_FIELDS = (*q.STORED_FIELDS, "ingested_at")
#: Seconds between two looks at a running copy (the task, or the new version's count).
POLL_S = 1.0
#: Hits per scroll batch of the copy (the server's default is 1,000).
COPY_BATCH = 1000


def reindex_body(source: str, dest: str) -> dict[str, Any]:
    """Keyword arguments of ``Elasticsearch.reindex`` copying every chunk of the concrete index ``source``
    into ``dest`` as a background task (see the module docstring). Pure."""
    return {
        "source": {"index": source, "_source": list(COPY_FIELDS), "size": COPY_BATCH},
        "dest": {"index": dest},
        "conflicts": "abort",
        "slices": "auto",
        "wait_for_completion": False,
        "refresh": False,
    }


def task_progress(status: dict[str, Any]) -> tuple[int, int]:
    """``(done, total)`` of a reindex task's ``status`` (or completed ``response``): created + updated +
    deleted + noops of total, the sum over its slices when it has them. Pure."""
    done = sum(int(status.get(k) or 0) for k in ("created", "updated", "deleted", "noops"))
    return done, int(status.get("total") or 0)


def first_failure(response: dict[str, Any]) -> str | None:
    """The first failure of a finished reindex task's ``response`` (a bulk item's cause, or a search
    failure's reason), or None when it had none. Pure."""
    for f in response.get("failures") or []:
        cause = f.get("cause") if isinstance(f, dict) else None
        if isinstance(cause, dict):
            return f"chunk {f.get('id')!r}: {cause.get('type')}: {cause.get('reason')}"
        reason = f.get("reason") if isinstance(f, dict) else None
        if isinstance(reason, dict):
            return f"{reason.get('type')}: {reason.get('reason')}"
        return str(f)
    return None


def copies_into(tasks: dict[str, Any], is_version: Callable[[str], bool]) -> list[str]:
    """The ids of the reindex tasks in ``tasks`` (a ``GET _tasks?actions=*reindex&detailed=true`` answer)
    that copy into an index for which ``is_version(name)`` holds; the parents only (cancelling a sliced
    copy's parent cancels its slices). Pure."""
    out = []
    for node in (tasks.get("nodes") or {}).values():
        for task_id, task in ((node or {}).get("tasks") or {}).items():
            dest = re.search(r" to \[([^\]]+)\]", str((task or {}).get("description") or ""))
            if dest and is_version(dest.group(1)) and not task.get("parent_task_id"):
                out.append(str(task_id))
    return sorted(out)


class ServerCopy:
    """One ``_reindex`` from ``store``'s live concrete index into ``target`` (see the module docstring)."""

    def __init__(self, store: ElasticsearchStore, source: str, target: ElasticsearchStore,
                 on_progress: Callable[[int, int], None] | None = None, poll_s: float = POLL_S) -> None:
        self.store = store
        self.source = source
        self.target = target
        self.dest = target.concrete_name
        self.on_progress = on_progress
        self.poll_s = max(0.01, poll_s)

    def _what(self) -> str:
        return f"copying '{self.source}' into '{self.dest}' inside Elasticsearch at {self.store.location}"

    def _progress(self, done: int, total: int) -> None:
        if self.on_progress is not None:
            self.on_progress(done, total)

    def run(self, total: int) -> CopyResult:
        """Run the copy of ``total`` chunks to its end (see the module docstring); StoreError on failure."""
        self._progress(0, total)
        started: dict[str, Any] = {}

        def start() -> None:
            try:
                client = self.store.client.options(request_timeout=None)
                started["response"] = client.reindex(**reindex_body(self.source, self.dest)).body
            except BaseException as e:  # noqa: BLE001 - re-raised by the polling thread
                started["error"] = e

        request = threading.Thread(target=start, name="esrag-reindex-start", daemon=True)
        request.start()
        while request.is_alive():  # a server that copies within the request: watch the new version
            request.join(self.poll_s)
            if request.is_alive():
                self._progress(self._dest_count(), total)
        if "error" in started:
            raise self._failed(started["error"])
        task = str((started.get("response") or {}).get("task") or "")
        if not task:
            raise StoreError(f"{self._what()}: the server answered without a task ({started.get('response')!r})")
        try:
            return self._await(task, total)
        except BaseException:
            self._cancel(task)
            raise

    def _await(self, task: str, total: int) -> CopyResult:
        """Poll the task to its end: progress from its status, StoreError for its failures."""
        while True:
            try:
                with self.store._api(f"{self._what()} (task {task})"):
                    resp = self.store.client.options(ignore_status=404).perform_request(
                        "GET", f"/_tasks/{quote(task, safe=':')}", headers={"accept": "application/json"})
            except EsragError as e:
                raise StoreError(f"{e}; the alias was not moved") from e
            if resp.meta.status == 404:  # the copy ran within the request, and no record was kept
                with self.store._api(f"refreshing '{self.dest}'"):  # missing: the reindex's check says so
                    self.store.client.options(ignore_status=404).indices.refresh(index=self.dest)
                copied = self._dest_count()
                self._progress(copied, total)
                return CopyResult(copied=copied, total=total, task=task, recorded=False)
            body = dict(resp.body)
            status = (body.get("task") or {}).get("status") or {}
            if not body.get("completed"):
                self._progress(*task_progress(status))
                time.sleep(self.poll_s)
                continue
            if body.get("error"):
                err = body["error"]
                raise StoreError(f"{self._what()} failed: {err.get('type')}: {err.get('reason')}; the alias "
                                 f"was not moved")
            response = body.get("response") or {}
            failure = first_failure(response)
            if failure is not None:
                raise StoreError(f"{self._what()} failed ({len(response.get('failures') or [])} failure(s)), "
                                 f"the first: {failure}; the alias was not moved")
            done, of = task_progress(response)
            self._progress(done, of or total)
            return CopyResult(copied=done, total=of or total, task=task, recorded=True)

    def _dest_count(self) -> int:
        """The new version's chunks as counted now (0 when it cannot be counted: progress only)."""
        try:
            resp = self.store.client.options(ignore_status=(404,)).count(index=self.dest)
        except (ApiError, TransportError):
            return 0
        return int(resp.body.get("count") or 0) if resp.meta.status == 200 else 0

    def _failed(self, e: BaseException) -> BaseException:
        if isinstance(e, (ApiError, TransportError)):
            reason = self.store._errors.reason(e)
            if isinstance(e, ApiError) and isinstance(e.body, dict):
                failure = first_failure(e.body)  # a server that answered the finished copy with its failures
                reason = f"{failure} ({len(e.body.get('failures') or [])} failure(s))" if failure else reason
            return StoreError(f"{self._what()} failed: {reason}; the alias was not moved")
        return e

    def _cancel(self, task: str) -> None:
        """Cancel the task if it still runs (best effort: the reindex is failing already)."""
        try:
            self.store.client.options(ignore_status=(400, 404)).tasks.cancel(task_id=task)
        except (ApiError, TransportError):
            pass


__all__ = ["COPY_FIELDS", "copies_into", "ServerCopy", "first_failure", "reindex_body", "task_progress"]
