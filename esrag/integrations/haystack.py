"""esrag as a Haystack retriever component (the ``esrag[haystack]`` extra: ``haystack-ai``).

::

    from haystack import Pipeline
    from esrag.integrations.haystack import EsragRetriever

    pipeline = Pipeline()
    pipeline.add_component("retriever", EsragRetriever(settings={"es_url": "http://localhost:9200", "index": "docs"}))
    result = pipeline.run({"retriever": {"query": "rotate the TLS certificates", "top_k": 5}})

The component takes an ``Engine`` (``engine=``) or the settings to build one (``settings=``: esrag setting
names and values, layered over esrag.toml and ``ESRAG_*`` variables as ``Settings.load`` does).
``to_dict``/``from_dict`` serialise it as Haystack serialises components (``Pipeline.dumps`` and
``loads`` included): the settings are written without secrets (``es_api_key``, ``es_password``,
``llm_api_key``, a URL holding a password, and plugin tables), which the loaded component reads
from ``ESRAG_*`` variables and esrag.toml, as the CLI does.

``run(query, filters, top_k)`` returns ``{"documents": [...]}``; ``run_async`` runs the same (blocking)
search in a worker thread, never on the event loop. The component holds no state of its own between
runs: one instance may serve any number of threads at once (the engine is thread-safe).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from esrag.config import SECRETS, URL_SETTINGS, Settings
from esrag.engine import Engine
from esrag.errors import ConfigError
from esrag.integrations._common import (
    Conjunction,
    check_options,
    hit_metadata,
    missing_extra,
    search,
    to_filters,
)
from esrag.redact import redact_url

try:
    from haystack import Document, component, default_from_dict, default_to_dict
    from haystack.document_stores.types import FilterPolicy
except ImportError as e:  # pragma: no cover - exercised in a subprocess without the package
    raise missing_extra("haystack-ai", "haystack", __name__) from e

__all__ = ["EsragRetriever", "to_esrag_filters"]

_LOGICAL = ("conditions",)
_COMPARISON = ("field", "value")


def to_esrag_filters(filters: Mapping[str, Any] | None) -> dict[str, tuple[str, ...]]:
    """esrag Filters from Haystack filters (``{"field": "meta.team", "operator": "==", "value": "db"}``, and
    ``{"operator": "AND", "conditions": [...]}``) or from esrag's own ``{key: value(s)}``.

    Of Haystack's filters, esrag runs the AND of equality conditions (``==`` and ``in``) on ``meta.*``
    fields (``meta.doc_id``, ``meta.source`` and ``meta.title`` address those fields, as the returned
    documents' meta shows them); a field given twice keeps the values both allow. Any other operator, an OR
    or NOT group, or a field outside ``meta`` raises ConfigError naming it."""
    if filters is None:
        return {}
    if not _is_haystack(filters):
        return to_filters(filters)
    out = Conjunction()
    _add(filters, out)
    return out.filters


def _is_haystack(filters: Mapping[str, Any]) -> bool:
    return "operator" in filters and (all(k in filters for k in _LOGICAL) or all(k in filters for k in _COMPARISON))


def _add(condition: Mapping[str, Any], out: Conjunction) -> None:
    if not isinstance(condition, Mapping) or "operator" not in condition:
        raise ConfigError(f"filters: not a Haystack filter condition: {condition!r}", field="filters")
    op = condition["operator"]
    if "conditions" in condition:
        if op != "AND":
            raise ConfigError(f"filters: esrag combines filters with AND only, got {op!r}", field="filters")
        for c in condition["conditions"]:
            _add(c, out)
        return
    field, value = str(condition.get("field", "")), condition.get("value")
    if not field.startswith("meta."):
        raise ConfigError(f"filters: esrag filters meta fields only (meta.doc_id, meta.source, meta.title, "
                          f"meta.<key>), got {field!r}", field="filters")
    key = field.removeprefix("meta.")
    if op == "==":
        out.add(key, [value])
    elif op == "in":
        if not isinstance(value, list | tuple):
            raise ConfigError(f"filters: 'in' takes a list of values, got {value!r} for {field!r}", field="filters")
        out.add(key, list(value))
    else:
        raise ConfigError(f"filters: esrag filters by equality only (== and in), got {field!r} {op} {value!r}",
                          field="filters")


def saved_settings(settings: Settings) -> dict[str, Any]:
    """The settings that differ from the defaults, as ``to_dict`` writes them: no secret, no URL that holds a
    password (both come from ``ESRAG_*`` variables or esrag.toml when loaded), no plugin tables."""
    values = settings.model_dump(exclude_defaults=True, exclude={"plugin_options", "sources"})
    for name in SECRETS:
        values.pop(name, None)
    for name in URL_SETTINGS:
        url = values.get(name)
        if isinstance(url, str) and redact_url(url) != url:
            del values[name]
    return values


@component
class EsragRetriever:
    """Hybrid BM25 + dense retrieval by an esrag ``Engine``, as a Haystack component: ``documents``, esrag's
    hits in esrag's order, each a Haystack ``Document`` with the chunk id as ``id``, the hit's text as
    ``content``, the fused score as ``score`` and, in ``meta``, the metadata of ``esrag.integrations``
    (the hit's metadata, positions and raw, normalised and fused scores).

    ``filters`` given to ``run`` replace the constructor's (``filter_policy`` ``replace``, Haystack's
    default) or are merged into them field by field (``merge``: a field given to ``run`` replaces that
    field's values). ``top_k`` 0 returns no documents without searching.
    """

    def __init__(
        self,
        settings: Mapping[str, Any] | None = None,
        engine: Engine | None = None,
        top_k: int | None = 10,
        filters: Mapping[str, Any] | None = None,
        filter_policy: FilterPolicy | str = FilterPolicy.REPLACE,
        mode: str | None = None,
        alpha: float | None = None,
        fusion: str | None = None,
        normalization: str | None = None,
        doc_weight: float | None = None,
        candidates: int | None = None,
        rrf_k: int | None = None,
    ) -> None:
        """``engine``: the engine to search with; else one is built from ``settings`` (esrag setting names
        and values, over esrag.toml and ``ESRAG_*`` variables). ``top_k`` None: the engine's ``k`` setting.
        The other options are ``Engine.search``'s (None: the engine's setting)."""
        if engine is not None and settings:
            raise ConfigError("give the retriever an engine or settings, not both", field="settings")
        self.engine = engine if engine is not None else Engine(Settings.load(overrides=dict(settings or {})))
        self.top_k = top_k
        self.filters = dict(filters) if filters is not None else None
        self.filter_policy = (filter_policy if isinstance(filter_policy, FilterPolicy)
                              else FilterPolicy.from_str(filter_policy))
        self.options: dict[str, Any] = {"mode": mode, "alpha": alpha, "fusion": fusion,
                                        "normalization": normalization, "doc_weight": doc_weight,
                                        "candidates": candidates, "rrf_k": rrf_k}
        check_options(top_k, self.options)
        self._init_filters = to_esrag_filters(self.filters)

    def warm_up(self) -> None:
        """Load the embedding model now (Haystack calls this before a pipeline runs), unless this retriever
        searches BM25 only; the first query then does not pay for it."""
        if (self.options["mode"] or self.engine.settings.mode) != "bm25":
            self.engine.embedder.get()

    def to_dict(self) -> dict[str, Any]:
        """Haystack's serialisation of this component (``settings`` without secrets: see ``saved_settings``)."""
        return default_to_dict(self, settings=saved_settings(self.engine.settings), top_k=self.top_k,
                               filters=self.filters, filter_policy=self.filter_policy.value, **self.options)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EsragRetriever:
        """The component ``to_dict`` described, with an engine built from its settings."""
        return default_from_dict(cls, data)

    def _filters(self, filters: Mapping[str, Any] | None) -> dict[str, tuple[str, ...]]:
        if filters is None:
            return self._init_filters
        given = to_esrag_filters(filters)
        if self.filter_policy == FilterPolicy.MERGE:
            return {**self._init_filters, **given}
        return given

    @component.output_types(documents=list[Document])
    def run(self, query: str, filters: dict[str, Any] | None = None, top_k: int | None = None
            ) -> dict[str, list[Document]]:
        """Search for ``query``: ``{"documents": [...]}``, best first, at most ``top_k`` (None: the
        constructor's). ``filters``: Haystack equality filters or esrag's ``{key: value(s)}``, applied by the
        filter policy. Errors are esrag's (ConfigError for a bad option, an unsupported filter or an empty
        query; IndexNotFoundError when the index does not exist)."""
        hits = search(self.engine, query, self.top_k if top_k is None else top_k, self._filters(filters),
                      self.options)
        return {"documents": [Document(id=h.id, content=h.text, meta=hit_metadata(h), score=h.score)
                              for h in hits]}

    @component.output_types(documents=list[Document])
    async def run_async(self, query: str, filters: dict[str, Any] | None = None, top_k: int | None = None
                        ) -> dict[str, list[Document]]:
        """``run`` in a worker thread (``asyncio.to_thread``), so the event loop stays free."""
        return await asyncio.to_thread(self.run, query, filters, top_k)

