"""An existing Elasticsearch index as a source: its records become documents, kept exactly in sync.

How it reads (every request a read; the source index is never written, ``esrag.sources.es_requests``):

1. ``start``: connect (``GET /``), open a point in time over the index (a missing index or a refused
   privilege is an error here, before anything is written), and check that each ``--text-field`` exists
   in at least one matching record (one ``_count`` each).
2. ``items``: the id pass. Pages of ``page_size`` records through the point in time with ``search_after``
   (never ``from``/``size``), no ``_source``: each record's ``_id``, ``_seq_no`` and ``_primary_term``
   (and the ``--id-field`` value, if one is given). Each record is a ``Stub`` whose version is those
   numbers: the ingest compares it with the stored version and skips an unchanged record without reading
   it. Memory: one page at a time, plus the ids read so far (for duplicate ids and for resuming).
3. ``fetch``: the changed records, read in full with one ``_mget`` per batch, only the fields in use.
4. With ``--slice I/N``, the point in time is sliced (``slice: {id, max}``): N processes, each with its own
   ``I``, split the index between them, with Elasticsearch doing the coordination.

Cost per record on an unchanged re-run: its ``_id`` and two numbers in the id pass (about 60 bytes of
JSON), and its share of one store lookup per batch of records; nothing is fetched, chunked or embedded.

Prune: the source's stored documents are those under ``es:<index>/``. Unsliced, the ones this run did not
see are gone (deleted, or no longer matching ``--query``). A slice cannot tell which stored records belong
to it (Elasticsearch splits the point in time by shard and Lucene doc ranges, not by id), so a sliced run
checks the stored records it did not see against the live index (an ``ids`` search per 1,000) and removes
only those that no longer exist or match: every slice removes exactly what is gone, whichever slice read
it before, and never a record another slice is responsible for.

A point in time that expires mid-run (the ingest was slower than ``keep_alive`` between two pages) is
re-opened and the pass resumed from the start, skipping the records already read (their ids are
remembered); after ``MAX_REOPEN`` re-opens the run stops with a message: what was written is consistent,
and the next run (which skips unchanged records) finishes the job.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from elastic_transport import TransportError
from elasticsearch import ApiError, AuthenticationException, AuthorizationException, Elasticsearch
from pydantic import BaseModel, ConfigDict, Field

from esrag import plugins
from esrag.config import Settings
from esrag.errors import ConfigError, EsragError, SourceError
from esrag.sources import es_records as rec
from esrag.sources import es_requests as req
from esrag.sources.base import BaseSource, Item, Progress, Stub
from esrag.sources.loaders import Notice, Skipped
from esrag.stores.es_client import (
    Connection,
    ErrorTranslator,
    RetryPolicy,
    api_reason,
    check_server,
    error_reason,
    is_retryable,
    make_client,
    resolve_connection,
    retry_after_s,
)
from esrag.types import Document

log = logging.getLogger(__name__)

#: how many times an expired point in time is re-opened before the run stops
MAX_REOPEN = 3
_KEEP_ALIVE = re.compile(r"^[1-9][0-9]*(ms|s|m|h|d)$")
_SLICE = re.compile(r"^([0-9]+)/([0-9]+)$")


class ElasticsearchSourceSettings(BaseModel):
    """The ``[source.elasticsearch]`` table of esrag.toml (``ESRAG_SOURCE_ELASTICSEARCH_<KEY>``), each key
    also an option of ``esrag ingest --from-index`` (which wins)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    index: str | None = None
    text_fields: list[str] = Field(default_factory=list)
    title_field: str | None = None
    metadata_fields: list[str] = Field(default_factory=list)
    id_field: str = "_id"
    #: a query (JSON object, or its text): only matching records are ingested
    query: dict[str, Any] | str | None = None
    #: the source cluster (default: the store's es_url and credentials)
    es_url: str | None = None
    es_api_key: str | None = Field(None, repr=False)
    es_api_key_file: str | None = None
    es_ca_certs: str | None = None
    #: "I/N": read slice I (0 to N-1) of N
    slice: str | None = None
    keep_alive: str = req.KEEP_ALIVE
    page_size: int = Field(req.PAGE_SIZE, ge=1, le=10_000)


def from_settings(settings: Settings, **options: Any) -> ElasticsearchSource:
    """The ``elasticsearch`` entry point: the ``[source.elasticsearch]`` settings, overridden by the
    ``options`` that are given (not None, not empty)."""
    own = plugins.plugin_settings(settings, plugins.SOURCES, "elasticsearch", ElasticsearchSourceSettings)
    given = {k: list(v) if isinstance(v, tuple) else v for k, v in options.items() if v not in (None, (), [])}
    unknown = sorted(set(given) - set(ElasticsearchSourceSettings.model_fields))
    if unknown:
        raise ConfigError(f"unknown option(s) of the elasticsearch source: {', '.join(unknown)}")
    try:
        merged = ElasticsearchSourceSettings.model_validate({**own.model_dump(), **given})
    except ValueError as e:
        raise ConfigError(f"the elasticsearch source: {e}") from None
    return ElasticsearchSource(settings, merged)


def parse_slice(text: str | None) -> tuple[int, int]:
    """``"I/N"`` -> (I, N), with 0 <= I < N; None -> (0, 1). ConfigError naming --slice otherwise."""
    if text is None:
        return 0, 1
    m = _SLICE.match(text.strip())
    if m is None or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise ConfigError(f"--slice {text!r}: expected I/N with 0 <= I < N (for example 0/4 ... 3/4)", field="slice")
    return int(m.group(1)), int(m.group(2))


def parse_query(query: dict[str, Any] | str | None) -> dict[str, Any] | None:
    """The ``--query`` as a query object (its JSON text is parsed); ConfigError naming --query otherwise."""
    if query is None or isinstance(query, dict):
        return query
    try:
        parsed = json.loads(query)
    except ValueError as e:
        raise ConfigError(f"--query is not JSON: {e}", field="query") from None
    if not isinstance(parsed, dict) or not parsed:
        raise ConfigError("--query must be a JSON object, a query such as {\"term\": {\"status\": \"published\"}}",
                          field="query")
    return parsed


class ElasticsearchSource(BaseSource):
    """The records of one index (or alias) of an Elasticsearch cluster (see the module docstring). No I/O
    until ``start``. Not thread-safe (one ingest at a time, as every source)."""

    name = "elasticsearch"
    unit = "record"

    def __init__(self, settings: Settings, own: ElasticsearchSourceSettings) -> None:
        if not own.index:
            raise ConfigError("the elasticsearch source needs an index: --from-index NAME (or index in "
                              "[source.elasticsearch])", field="index")
        if not own.text_fields:
            raise ConfigError(f"--from-index {own.index}: give at least one --text-field (the field(s) holding "
                              "the text to search)", field="text_fields")
        reserved = sorted(set(own.metadata_fields) & set(rec.RESERVED_METADATA))
        if reserved:
            raise ConfigError(f"--metadata-field {reserved[0]}: that key is reserved (every chunk of the source "
                              f"carries {', '.join(rec.RESERVED_METADATA)})", field="metadata_fields")
        if not _KEEP_ALIVE.match(own.keep_alive):
            raise ConfigError(f"--source-keep-alive {own.keep_alive!r}: expected a duration such as 30s, 5m or 1h",
                              field="keep_alive")
        self.index = own.index
        self.fields = rec.RecordFields(tuple(dict.fromkeys(own.text_fields)), own.title_field or None,
                                       tuple(dict.fromkeys(own.metadata_fields)), own.id_field)
        self.query = parse_query(own.query)
        self.slice_id, self.slices = parse_slice(own.slice)
        self.keep_alive = own.keep_alive
        self.page_size = own.page_size
        self.settings = _connection_settings(settings, own)
        self._conn: Connection = resolve_connection(self.settings)
        self.location = self._conn.location
        self._errors = ErrorTranslator(self.settings, self.location, self.index)
        self._retry = RetryPolicy(budget_s=self.settings.es_retry_seconds)
        self._client: Elasticsearch | None = None
        self._pit: str | None = None
        self._seen: set[str] = set()

    def __repr__(self) -> str:
        return f"ElasticsearchSource({self.location!r}, index={self.index!r})"

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.name, "location": self.location, "index": self.index,
                               "text_fields": list(self.fields.text_fields)}
        if self.slices > 1:
            out["slice"] = f"{self.slice_id}/{self.slices}"
        return out

    # -- requests -----------------------------------------------------------------------------------------

    @property
    def client(self) -> Elasticsearch:
        if self._client is None:
            client = make_client(self.settings, self._conn)
            check_server(client, self.settings, self._errors)
            self._client = client
        return self._client

    def _error(self, e: Exception, action: str) -> EsragError:
        where = f"source index {self.index!r} at {self.location}"
        if isinstance(e, AuthorizationException) or (isinstance(e, ApiError) and e.meta.status == 403):
            return SourceError(f"no read privilege on {where} (HTTP 403) while {action}: the source's credentials "
                               f"(--source-es-api-key) need the `read` privilege on it; "
                               f"{self._errors.clean(api_reason(e))}")  # type: ignore[arg-type]
        if isinstance(e, AuthenticationException):
            return SourceError(f"authentication failed at {self.location} (HTTP 401) while {action}: check "
                               "--source-es-api-key (or the store's credentials, used by default)")
        if isinstance(e, ApiError) and e.meta.status == 404 and "index_not_found" in api_reason(e):
            return SourceError(f"source index {self.index!r} not found at {self.location}; check --from-index "
                               "(an index, alias or pattern the credentials can read)")
        inner = self._errors.translate(e, action)
        return SourceError(f"{where}: {inner}")

    def _call(self, action: str, call: Callable[[], Any]) -> Any:
        """``call()``, retried on back-pressure and connection errors (like the store's reads), its errors
        turned into SourceError naming the index."""
        attempt = 0
        while True:
            try:
                result = call()
            except (ApiError, TransportError) as e:
                waited = None
                if is_retryable(e):
                    waited = self._retry.wait(attempt, retry_after_s(e) if isinstance(e, ApiError) else None)
                if waited is None:
                    if _expired(e):
                        raise
                    raise self._error(e, action) from e
                log.warning("source %s at %s: %s while %s; retrying in %.1f s", self.index, self.location,
                            self._errors.reason(e), action, waited)
                attempt += 1
                continue
            self._retry.progress()
            return result

    def _count(self, body: dict[str, Any]) -> Any:
        return self.client.count(**body)

    def _search(self, body: dict[str, Any]) -> Any:
        return self.client.search(**body)

    def _open(self) -> None:
        self._close_pit()
        args = req.open_pit_args(self.index, self.keep_alive)
        self._pit = str(self._call("opening a point in time", lambda: self.client.open_point_in_time(**args))["id"])

    def _close_pit(self) -> None:
        pit, self._pit = self._pit, None
        if pit is not None and self._client is not None:
            try:
                self._client.options(ignore_status=(400, 404)).close_point_in_time(id=pit)
            except (ApiError, TransportError) as e:  # it expires on its own
                log.debug("closing the point in time on %s: %s", self.index, e)

    # -- the Source contract ------------------------------------------------------------------------------

    def start(self) -> int | None:
        self._seen = set()
        self._open()
        for f in self.fields.text_fields:
            args = req.exists_count_args(self.index, self.query, f)
            found = int(self._call(f"counting records with {f!r}", functools.partial(self._count, args))["count"])
            if found == 0 and self._has_records():
                which = " matching --query" if self.query is not None else ""
                raise ConfigError(f"no record of source index {self.index!r}{which} has the text field {f!r}; "
                                  f"check --text-field (the index's fields: {self._field_names()})",
                                  field="text_fields")
        return None

    def _has_records(self) -> bool:
        body: dict[str, Any] = {"index": self.index}
        if self.query is not None:
            body["query"] = self.query
        return int(self._call("counting records", functools.partial(self._count, body))["count"]) > 0

    def _field_names(self) -> str:
        resp = self._call("reading the mapping", lambda: self.client.indices.get_mapping(index=self.index))
        names: set[str] = set()
        for mapping in dict(resp).values():
            _collect(mapping.get("mappings", {}).get("properties", {}), "", names)
        listed = sorted(names)
        return ", ".join(listed[:30]) + (f" and {len(listed) - 30} more" if len(listed) > 30 else "") or "none"

    def items(self) -> Iterator[Item]:
        done = reopened = 0
        after: list[Any] | None = None
        while True:
            assert self._pit is not None, "start() opens the point in time"
            body = req.id_page_body(self._pit, self.keep_alive, self.query, self.fields.id_field, self.page_size,
                                    after, self.slice_id, self.slices)
            try:
                resp = self._call("reading record ids", functools.partial(self._search, body))
            except (ApiError, TransportError) as e:  # only an expired point in time gets here
                reopened += 1
                if reopened > MAX_REOPEN:
                    raise SourceError(
                        f"the point in time over source index {self.index!r} expired {reopened} times (keep-alive "
                        f"{self.keep_alive}) after {done} records: what was written is consistent and kept; run "
                        "the same ingest again to finish it (unchanged records are skipped), with a longer "
                        "--source-keep-alive") from e
                yield Notice("", f"the point in time over source index {self.index!r} expired after {done} "
                                 f"records (keep-alive {self.keep_alive}); re-opened it and resumed")
                self._open()
                after = None
                continue
            self._pit = str(resp.get("pit_id") or self._pit)
            hits = resp["hits"]["hits"]
            for hit in hits:
                item = self._stub(hit, resumed=reopened > 0)
                if item is not None:
                    done += isinstance(item, Stub)
                    yield item
            yield Progress(done, 0)
            if len(hits) < self.page_size:
                return
            after = hits[-1]["sort"]

    def _stub(self, hit: dict[str, Any], resumed: bool) -> Stub | Skipped | None:
        where = f"{hit.get('_index', self.index)}/_doc/{hit['_id']}"
        try:
            did = rec.checked_doc_id(self.index, rec.record_id(hit, self.fields.id_field))
        except rec.FieldProblem as e:
            return Skipped(where, str(e))
        if did in self._seen:
            # after a re-open the pass starts again: records already read come back
            return None if resumed else Skipped(where, f"duplicate record id: {did!r} was read already")
        self._seen.add(did)
        return Stub(did, rec.version(self.fields, hit), ref=(str(hit.get("_index", self.index)), str(hit["_id"])))

    def fetch(self, stubs: Sequence[Stub]) -> Iterator[Document | Skipped]:
        args = req.fetch_args([s.ref for s in stubs], self.fields.source_fields)
        resp = self._call("reading changed records", lambda: self.client.mget(**args))
        for doc in resp["docs"]:
            if "error" in doc:
                raise SourceError(f"source index {self.index!r} at {self.location}: reading record "
                                  f"{doc.get('_id')!r} failed: {self._errors.clean(error_reason(doc))}")
            if doc.get("found"):
                yield rec.record_document(self.index, doc, self.fields)

    def scopes(self) -> list[str]:
        return [rec.scope(self.index)]

    def owns(self, doc_id: str) -> bool:
        return doc_id.startswith(rec.scope(self.index))

    def gone(self, doc_ids: Sequence[str]) -> list[str]:
        """Unsliced: all of them (the complete pass did not see them). Sliced: those whose record no longer
        exists or matches ``--query`` in the live index (see the module docstring)."""
        if self.slices == 1:
            return list(doc_ids)
        prefix = len(rec.scope(self.index))
        out: list[str] = []
        for lo in range(0, len(doc_ids), req.CHECK_BATCH):
            batch = list(doc_ids[lo:lo + req.CHECK_BATCH])
            body = req.ids_check_body(self.index, self.query, self.fields.id_field, [d[prefix:] for d in batch])
            hits = self._call("checking stored records", functools.partial(self._search, body))["hits"]["hits"]
            present = set()
            for hit in hits:
                try:
                    present.add(rec.doc_id(self.index, rec.record_id(hit, self.fields.id_field)))
                except rec.FieldProblem:
                    continue
            out.extend(d for d in batch if d not in present)
        return out

    def close(self) -> None:
        self._close_pit()
        client, self._client = self._client, None
        if client is not None:
            client.close()
        self._seen = set()


def _expired(e: Exception) -> bool:
    """Whether ``e`` says the point in time is gone (expired or freed): HTTP 404 naming a search context."""
    if not isinstance(e, ApiError) or e.meta.status != 404:
        return False
    reason = api_reason(e).lower()
    return "search_context_missing" in reason or "search context" in reason


def _collect(properties: dict[str, Any], prefix: str, out: set[str]) -> None:
    for name, spec in properties.items():
        out.add(prefix + name)
        if isinstance(spec, dict) and isinstance(spec.get("properties"), dict):
            _collect(spec["properties"], f"{prefix}{name}.", out)


def _connection_settings(settings: Settings, own: ElasticsearchSourceSettings) -> Settings:
    """The Settings the source's client is built from: the store's connection, or with ``es_url`` another
    cluster (none of the store's credentials then); the source's API key wins either way."""
    key = own.es_api_key
    if own.es_api_key_file:
        try:
            key = Path(own.es_api_key_file).expanduser().read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(f"--source-es-api-key-file {own.es_api_key_file}: cannot read it: {e.strerror}",
                              field="es_api_key_file") from None
        if not key:
            raise ConfigError(f"--source-es-api-key-file {own.es_api_key_file} is empty", field="es_api_key_file")
    if own.es_url is None and not settings.es_url:
        raise ConfigError("the elasticsearch source needs a cluster: --source-es-url URL (or es_url, which it "
                          "uses by default)", field="es_url")
    data = settings.model_dump(exclude={"sources"})
    if own.es_url is not None:
        data.update(es_url=own.es_url, es_api_key=None, es_username=None, es_password=None)
    if key:
        data["es_api_key"] = key
    if own.es_ca_certs:
        data["es_ca_certs"] = own.es_ca_certs
    return Settings(**data, sources=dict(settings.sources))
