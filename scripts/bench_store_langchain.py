"""The LangChain baseline for ``bench_store.py --langchain`` (not part of the package).

``BM25Retriever`` (rank_bm25, LangChain's default whitespace tokenisation) over ``title + "\\n" + text``, a
dense retriever over the same precomputed vectors (a persistent Chroma collection, cosine space, filled
through the chromadb client and wrapped in ``langchain_chroma.Chroma``; the query vector is looked up by
text, so no embedding on either side) and ``EnsembleRetriever([bm25, dense], weights=[0.5, 0.5])`` (weighted
RRF), each retriever returning ``candidates`` documents and the ensemble cut to ``k``.
"""

from __future__ import annotations

import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

INSTALL_HINT = "pip install -e '.[compare]'"


def check_installed() -> str | None:
    """None when the LangChain baseline can run, else a message naming what is missing and the extra."""
    missing = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for module in ("chromadb", "rank_bm25", "langchain_core", "langchain_chroma", "langchain_community"):
            try:
                __import__(module)
            except ImportError:
                missing.append(module)
        if _ensemble_class() is None:
            missing.append("langchain_classic (or langchain<1.0)")
    if not missing:
        return None
    return f"--langchain needs {', '.join(missing)}: {INSTALL_HINT}"


def _ensemble_class() -> Any:
    """``EnsembleRetriever``: ``langchain_classic.retrievers`` in langchain 1.x, ``langchain.retrievers`` before."""
    try:
        from langchain_classic.retrievers import EnsembleRetriever
    except ImportError:
        try:
            from langchain.retrievers import EnsembleRetriever  # type: ignore[no-redef]
        except ImportError:
            return None
    return EnsembleRetriever


class Baseline:
    """The built LangChain retrievers; ``bm25_ms`` / ``ensemble_ms`` time one ``invoke`` each."""

    def __init__(self, pairs: list[tuple[str, str]], vectors: np.ndarray,
                 queries: list[tuple[str, np.ndarray]], chroma_dir: Path, k: int, candidates: int) -> None:
        with warnings.catch_warnings():  # langchain-community's sunset DeprecationWarning
            warnings.simplefilter("ignore")
            import chromadb
            from langchain_chroma import Chroma
            from langchain_community.retrievers import BM25Retriever
            from langchain_core.documents import Document
            from langchain_core.embeddings import Embeddings
        ensemble_cls = _ensemble_class()

        lookup = {text: vector for text, vector in queries}
        self.duplicate_query_texts = len(queries) - len(lookup)

        class PrecomputedQueryEmbeddings(Embeddings):
            """The precomputed query vector for each query text; documents arrive with their vectors."""

            def embed_documents(self, docs: list[str]) -> list[list[float]]:
                raise NotImplementedError("documents are added with their precomputed vectors")

            def embed_query(self, text: str) -> list[float]:
                return lookup[text].tolist()

        contents = [f"{title}\n{text}" for title, text in pairs]
        ids = [str(i) for i in range(len(pairs))]
        docs = [Document(page_content=c, metadata={"id": i}) for c, i in zip(contents, ids, strict=True)]
        t0 = time.perf_counter()
        self.bm25 = BM25Retriever.from_documents(docs, k=candidates)
        self.bm25_build_s = time.perf_counter() - t0
        del docs

        shutil.rmtree(chroma_dir, ignore_errors=True)
        t0 = time.perf_counter()
        client = chromadb.PersistentClient(path=str(chroma_dir))
        collection = client.create_collection("bench", metadata={"hnsw:space": "cosine"})
        batch = client.get_max_batch_size()
        for at in range(0, len(ids), batch):
            end = at + batch
            collection.add(ids=ids[at:end], embeddings=vectors[at:end], documents=contents[at:end],
                           metadatas=[{"id": i} for i in ids[at:end]])
        chroma = Chroma(client=client, collection_name="bench", embedding_function=PrecomputedQueryEmbeddings())
        self.chroma_build_s = time.perf_counter() - t0
        self.chroma_bytes = sum(p.stat().st_size for p in chroma_dir.rglob("*") if p.is_file())

        self.dense = chroma.as_retriever(search_kwargs={"k": candidates})
        self.ensemble = ensemble_cls(retrievers=[self.bm25, self.dense], weights=[0.5, 0.5], id_key="id")
        self.k = k
        # Warm-up, as on the esrag side: the first call of each retriever is not timed.
        self.ensemble.invoke(queries[0][0])

    @staticmethod
    def _time(call: Callable[[], Any]) -> float:
        t0 = time.perf_counter()
        call()
        return (time.perf_counter() - t0) * 1e3

    def bm25_ms(self, text: str) -> float:
        return self._time(lambda: self.bm25.invoke(text))

    def ensemble_ms(self, text: str) -> float:
        return self._time(lambda: self.ensemble.invoke(text)[:self.k])

    @property
    def build_s(self) -> float:
        return self.bm25_build_s + self.chroma_build_s
