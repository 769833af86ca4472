"""esrag as the retriever of LangChain, LlamaIndex and Haystack applications.

Each adapter is a thin layer over ``esrag.Engine.search`` in a module of its own, importable only with
its framework installed (the extra named in the error otherwise):

- ``esrag.integrations.langchain.EsragRetriever``: a LangChain ``BaseRetriever`` (``esrag[langchain]``);
- ``esrag.integrations.llamaindex.EsragRetriever``: a LlamaIndex ``BaseRetriever`` (``esrag[llamaindex]``);
- ``esrag.integrations.haystack.EsragRetriever``: a Haystack component (``esrag[haystack]``).

Every one returns esrag's hits in esrag's order, the hit's text as the document's text and, in the
document's metadata, the hit's own metadata plus ``chunk_id``, ``doc_id``, ``source``, ``title``,
``chunk_index`` and the scores (``score``: the fused one; ``bm25_score``/``dense_score``: each side's raw
store score, None when that side did not return the chunk; their ranks and normalised scores). Filters are
esrag's (``{"team": "platform"}``, a list for several accepted values) or, for LlamaIndex and Haystack, the
framework's own equality filters. Importing this package imports no framework.
"""
