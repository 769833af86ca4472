"""esrag: hybrid BM25 + dense retrieval and RAG over Elasticsearch (or an embedded SQLite store)."""

__version__ = "0.1.0"
