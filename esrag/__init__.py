"""esrag: hybrid BM25 + dense retrieval and RAG over Elasticsearch (or an embedded SQLite store).

The public Python API is what ``__all__`` lists; everything else is internal and may change. Worked
examples are in docs/python.md::

    import esrag

    with esrag.Engine(esrag.Settings(index="handbook")) as engine:
        engine.ingest_documents([esrag.Document(doc_id="keys", source="keys.md", text="Rotate keys yearly.")])
        for hit in engine.search("how often are keys rotated", k=3).hits:
            print(hit.score, hit.source, hit.text)

- ``Engine``: every operation (ingest, search, ask, delete, status) over one ``Settings``; thread-safe.
- ``Settings``: every setting; ``Settings(...)`` takes explicit values only, ``Settings.load(...)`` layers
  defaults < esrag.toml < ``ESRAG_*`` variables < the values given.
- ``Document`` goes in; ``SearchResult`` (its ``hits``, each a ``Hit``), ``AnswerStream`` and ``Answer``
  (with ``Citation``s and ``Passage``s) and ``IngestReport`` come out. ``Filters`` maps a field to the
  values it may take.
- ``EsragError`` is the base of every error esrag raises on purpose (see ``esrag.errors``).
- Framework adapters live in ``esrag.integrations`` (LangChain, LlamaIndex, Haystack), each behind its extra.

Importing esrag imports none of this: each name is loaded the first time it is used, so ``import esrag``
costs about a millisecond and loads no model, no numpy and no framework.
"""

from __future__ import annotations

from importlib import import_module

TYPE_CHECKING = False  # not ``typing.TYPE_CHECKING``: importing typing would double the cost of ``import esrag``

__version__ = "0.1.0"

#: public name -> the module that defines it (imported on first access)
_EXPORTS: dict[str, str] = {
    "Engine": "esrag.engine",
    "Settings": "esrag.config",
    "Document": "esrag.types",
    "Hit": "esrag.types",
    "Filters": "esrag.types",
    "SearchResult": "esrag.retrieval.search",
    "Answer": "esrag.answering.rag",
    "AnswerStream": "esrag.answering.rag",
    "Citation": "esrag.answering.rag",
    "Passage": "esrag.answering.prompt",
    "IngestReport": "esrag.ingest.report",
    "EsragError": "esrag.errors",
    "ConfigError": "esrag.errors",
    "IndexNotFoundError": "esrag.errors",
    "MissingDependencyError": "esrag.errors",
}

__all__ = [  # written out, so that linters and type checkers read it; the same names as ``_EXPORTS``
    "__version__", "Engine", "Settings", "Document", "Hit", "Filters", "SearchResult", "Answer", "AnswerStream",
    "Citation", "Passage", "IngestReport", "EsragError", "ConfigError", "IndexNotFoundError",
    "MissingDependencyError",
]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time ``__getattr__`` imports on demand
    from typing import Any

    from esrag.answering.prompt import Passage
    from esrag.answering.rag import Answer, AnswerStream, Citation
    from esrag.config import Settings
    from esrag.engine import Engine
    from esrag.errors import ConfigError, EsragError, IndexNotFoundError, MissingDependencyError
    from esrag.ingest.report import IngestReport
    from esrag.retrieval.search import SearchResult
    from esrag.types import Document, Filters, Hit


def __getattr__(name: str) -> Any:
    """Import the public ``name`` on first access and keep it as a module attribute (so the next access
    costs nothing); AttributeError for any other name, as for a plain module."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'esrag' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
