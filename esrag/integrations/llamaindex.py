"""esrag as a LlamaIndex retriever (the ``esrag[llamaindex]`` extra: ``llama-index-core``).

::

    from esrag import Engine, Settings
    from esrag.integrations.llamaindex import EsragRetriever
    from llama_index.core.query_engine import RetrieverQueryEngine

    retriever = EsragRetriever(Engine(Settings(es_url="http://localhost:9200", index="docs")), similarity_top_k=5)
    response = RetrieverQueryEngine.from_args(retriever, llm=my_llm).query("rotate the TLS certificates")

The search options are constructor arguments (``similarity_top_k``, ``filters``, ``mode``, ``alpha``,
``fusion``, ``normalization``, ``doc_weight``, ``candidates``, ``rrf_k``; None: the engine's setting) and
attributes of the same names, read at each call. ``aretrieve`` runs the (blocking) search in a worker
thread, never on the event loop. The retriever holds no state of its own between calls: one instance may
serve any number of threads and tasks at once (the engine is thread-safe).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from esrag.engine import Engine
from esrag.errors import ConfigError
from esrag.integrations._common import (
    POSITION_KEYS,
    SCORE_KEYS,
    Conjunction,
    FilterInput,
    check_options,
    hit_metadata,
    missing_extra,
    search,
    to_filters,
)
from esrag.types import Hit

try:
    from llama_index.core.callbacks import CallbackManager
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.schema import NodeRelationship, NodeWithScore, QueryBundle, RelatedNodeInfo, TextNode
    from llama_index.core.vector_stores.types import FilterCondition, FilterOperator, MetadataFilters
except ImportError as e:  # pragma: no cover - exercised in a subprocess without the package
    raise missing_extra("llama-index-core", "llamaindex", __name__) from e

__all__ = ["EsragRetriever", "to_esrag_filters"]

#: metadata that is not content: kept out of what the LLM and embedders see (LlamaIndex puts a node's
#: metadata into the prompt by default); ``source`` and ``title`` stay in, as the LLM's citation handles
HIDDEN_KEYS = [k for k in (*POSITION_KEYS, *SCORE_KEYS) if k not in ("source", "title")]


def to_esrag_filters(filters: MetadataFilters | FilterInput | None) -> dict[str, tuple[str, ...]]:
    """esrag Filters from LlamaIndex ``MetadataFilters`` or from esrag's own ``{key: value(s)}``.

    Of LlamaIndex's filters, esrag runs the AND of equality conditions: ``==`` (``EQ``) and ``in``
    (``IN``), nested AND groups included; a key given twice keeps the values both allow. Any other
    operator or an OR/NOT group raises ConfigError naming it (esrag does not filter by ranges or
    negations)."""
    if filters is None or isinstance(filters, Mapping):
        return to_filters(filters)
    if not isinstance(filters, MetadataFilters):
        raise ConfigError(f"filters: expected MetadataFilters or a mapping of key to value(s), got "
                          f"{type(filters).__name__}", field="filters")
    out = Conjunction()
    _add_all(filters, out)
    return out.filters


def _add_all(group: MetadataFilters, out: Conjunction) -> None:
    if len(group.filters) > 1 and group.condition not in (None, FilterCondition.AND):
        raise ConfigError(f"filters: esrag combines filters with AND only, got {group.condition}",
                          field="filters")
    if group.condition == FilterCondition.NOT:
        raise ConfigError("filters: esrag does not negate filters (condition NOT)", field="filters")
    for f in group.filters:
        if isinstance(f, MetadataFilters):
            _add_all(f, out)
        elif f.operator == FilterOperator.EQ:
            out.add(f.key, [f.value])
        elif f.operator == FilterOperator.IN:
            out.add(f.key, list(f.value) if isinstance(f.value, list) else [f.value])
        else:
            raise ConfigError(f"filters: esrag filters by equality only (== and in), got {f.key!r} "
                              f"{f.operator.value} {f.value!r}", field="filters")


def to_node(hit: Hit) -> NodeWithScore:
    """One hit as a scored LlamaIndex node: the chunk id as node id, the document as its source node, the
    fused score as its score and ``hit_metadata`` as its metadata (ids and scores hidden from the LLM)."""
    node = TextNode(
        id_=hit.id, text=hit.text, metadata=hit_metadata(hit),
        excluded_llm_metadata_keys=HIDDEN_KEYS, excluded_embed_metadata_keys=HIDDEN_KEYS,
        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=hit.doc_id)},
    )
    return NodeWithScore(node=node, score=hit.score)


class EsragRetriever(BaseRetriever):
    """Hybrid BM25 + dense retrieval by an esrag ``Engine``: ``NodeWithScore``s, esrag's hits in esrag's
    order, each a ``TextNode`` with the hit's text, the chunk id as node id, the document id as its source
    node, the fused score as its score, and the metadata of ``esrag.integrations`` (the hit's metadata,
    positions and raw, normalised and fused scores).

    ``similarity_top_k`` 0 returns no nodes without searching. Errors are esrag's: ConfigError for a bad
    option, an unsupported filter or an empty query, IndexNotFoundError when the index does not exist.
    """

    def __init__(
        self,
        engine: Engine,
        similarity_top_k: int | None = None,
        filters: MetadataFilters | FilterInput | None = None,
        mode: str | None = None,
        alpha: float | None = None,
        fusion: str | None = None,
        normalization: str | None = None,
        doc_weight: float | None = None,
        candidates: int | None = None,
        rrf_k: int | None = None,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        super().__init__(callback_manager=callback_manager, verbose=verbose)
        self.engine = engine
        self.similarity_top_k = similarity_top_k
        self.filters = filters
        self.mode = mode
        self.alpha = alpha
        self.fusion = fusion
        self.normalization = normalization
        self.doc_weight = doc_weight
        self.candidates = candidates
        self.rrf_k = rrf_k
        check_options(similarity_top_k, self._options())
        to_esrag_filters(filters)

    def _options(self) -> dict[str, Any]:
        return {"mode": self.mode, "alpha": self.alpha, "fusion": self.fusion, "normalization": self.normalization,
                "doc_weight": self.doc_weight, "candidates": self.candidates, "rrf_k": self.rrf_k}

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = search(self.engine, query_bundle.query_str, self.similarity_top_k, to_esrag_filters(self.filters),
                      self._options())
        return [to_node(h) for h in hits]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        """The sync search in a worker thread (``asyncio.to_thread``), so the event loop stays free."""
        return await asyncio.to_thread(self._retrieve, query_bundle)
