"""esrag as a LangChain retriever (the ``esrag[langchain]`` extra: ``langchain-core``).

::

    from esrag import Engine, Settings
    from esrag.integrations.langchain import EsragRetriever

    retriever = EsragRetriever(engine=Engine(Settings(es_url="http://localhost:9200", index="docs")), k=5)
    docs = retriever.invoke("rotate the TLS certificates", filters={"team": "platform"}, alpha=0.5)

Every search option is a field (``k``, ``mode``, ``alpha``, ``fusion``, ``normalization``, ``doc_weight``,
``candidates``, ``rrf_k``, ``filters``; None: the engine's setting) and may be given per call as a keyword
of ``invoke``/``ainvoke``, or through the invoke config with LangChain's ``configurable_fields``. Per-call
filters are merged into the field's, key by key (a key given per call replaces that key's values).

``ainvoke`` runs the (blocking) search in LangChain's executor, never on the event loop. The retriever
holds no state of its own between calls: one instance may serve any number of threads and tasks at once
(the engine is thread-safe).
"""

from __future__ import annotations

from typing import Any

from esrag.engine import Engine
from esrag.integrations._common import FilterInput, check_options, hit_metadata, missing_extra, search, to_filters

try:
    from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever
    from langchain_core.runnables.config import run_in_executor
    from pydantic import ConfigDict, Field
except ImportError as e:  # pragma: no cover - exercised in a subprocess without the package
    raise missing_extra("langchain-core", "langchain", __name__) from e

__all__ = ["EsragRetriever"]


class EsragRetriever(BaseRetriever):
    """Hybrid BM25 + dense retrieval by an esrag ``Engine``: LangChain ``Document``s, esrag's hits in esrag's
    order, each with the hit's text as ``page_content``, the chunk id as ``id`` and, in ``metadata``, the
    hit's metadata plus ``chunk_id``, ``doc_id``, ``source``, ``title``, ``chunk_index``, ``score`` (the
    fused score), ``bm25_score``, ``dense_score`` (raw store scores; None for a side that did not return the
    chunk), ``bm25_rank``, ``dense_rank``, ``bm25_norm`` and ``dense_norm``.

    ``k`` 0 returns no documents without searching. Errors are esrag's: ConfigError for a bad option or an
    empty query, IndexNotFoundError when the index does not exist, StoreError when the store fails.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    engine: Engine = Field(exclude=True)
    """The engine that searches (its settings name the store, index and model)."""
    k: int | None = None
    """How many documents to return (None: the engine's ``k`` setting)."""
    mode: str | None = None
    """``hybrid``, ``bm25`` or ``dense``."""
    alpha: float | None = None
    """The dense side's weight in the fusion, in [0, 1]."""
    fusion: str | None = None
    """``linear`` or ``rrf``."""
    normalization: str | None = None
    """``zscore``, ``minmax`` or ``none``."""
    doc_weight: float | None = None
    """How much a chunk's section opening counts, in [0, 1]."""
    candidates: int | None = None
    """Candidates fetched per side before fusing."""
    rrf_k: int | None = None
    """RRF's rank constant."""
    filters: dict[str, Any] | None = None
    """``{key: value}`` or ``{key: [values]}``: keys ANDed, values ORed; ``doc_id``, ``source`` and ``title``
    address those fields, other keys the metadata."""

    def __init__(self, **fields: Any) -> None:
        """Check the options once, at construction (ConfigError naming the option), so that a bad one fails
        here rather than at the first call."""
        super().__init__(**fields)
        check_options(self.k, self._options({}))
        to_filters(self.filters)

    def _options(self, given: dict[str, Any]) -> dict[str, Any]:
        return {name: given[name] if given.get(name) is not None else getattr(self, name)
                for name in ("mode", "alpha", "fusion", "normalization", "doc_weight", "candidates", "rrf_k")}

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        filters: FilterInput | None = None,
        mode: str | None = None,
        alpha: float | None = None,
        fusion: str | None = None,
        normalization: str | None = None,
        doc_weight: float | None = None,
        candidates: int | None = None,
        rrf_k: int | None = None,
    ) -> list[Document]:
        options = self._options({"mode": mode, "alpha": alpha, "fusion": fusion, "normalization": normalization,
                                 "doc_weight": doc_weight, "candidates": candidates, "rrf_k": rrf_k})
        merged = {**to_filters(self.filters), **to_filters(filters)}
        hits = search(self.engine, query, self.k if k is None else k, merged, options)
        return [Document(page_content=h.text, metadata=hit_metadata(h), id=h.id) for h in hits]

    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        **options: Any,
    ) -> list[Document]:
        """The sync search, run in LangChain's executor (a thread), so the event loop stays free."""
        return await run_in_executor(None, self._get_relevant_documents, query,
                                     run_manager=run_manager.get_sync(), **options)
