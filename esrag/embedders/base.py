"""The Embedder interface: text -> L2-normalised float32 vectors, plus the tokenizer used to size chunks.

Embedders are plugins (entry-point group ``esrag.embedders``): a callable ``(settings) -> Embedder``. It may
carry a ``model_name_for(settings) -> str`` attribute, which lets the engine record and check the model
name without loading the model (see ``esrag.embedders.lazy``). An embedder says in its docstring whether it
is thread-safe; the engine calls it from ingest threads and API worker threads at once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np


class Embedder(ABC):
    """Subclasses implement ``embed_batch``; everything else is built on it.

    ``model_name`` is what gets recorded in the index meta, ``dims`` the vector size and ``max_tokens`` the
    longest text (in the model's tokens, special tokens excluded) the model reads without truncation.
    """

    model_name: str
    dims: int
    max_tokens: int
    query_prefix: str = ""
    passage_prefix: str = ""

    @abstractmethod
    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Embed already-prefixed texts; returns float32 array (len(texts), dims), rows L2-normalised."""

    @abstractmethod
    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Number of model tokens (special tokens excluded) of each text."""

    def ready(self) -> None:
        """Raise EmbeddingError when the embedder cannot embed now (a remote one: its server does not
        answer); nothing for an in-process model, which is ready once loaded."""
        return None

    def embed_urgent(self, texts: Sequence[str]) -> np.ndarray:
        """Like ``embed_batch``, for texts a user is waiting on (queries). An embedder that runs one model
        call at a time serves these before its waiting bulk work (see esrag.embedders.lanes); the default is
        ``embed_batch``."""
        return self.embed_batch(texts)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Passages (chunks, sentences): bulk work, with the passage prefix."""
        if not texts:
            return np.zeros((0, self.dims), dtype=np.float32)
        return self.embed_batch([self.passage_prefix + t for t in texts])

    def embed_query(self, text: str) -> np.ndarray:
        """One query, with the query prefix, in the urgent lane (``embed_urgent``)."""
        return self.embed_urgent([self.query_prefix + text])[0]

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Many queries at once (evaluation), with the query prefix, like ``embed_query``."""
        if not texts:
            return np.zeros((0, self.dims), dtype=np.float32)
        return self.embed_urgent([self.query_prefix + t for t in texts])
