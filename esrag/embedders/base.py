"""The Embedder interface: text -> L2-normalised float32 vectors, plus the tokenizer used to size chunks."""

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

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dims), dtype=np.float32)
        return self.embed_batch([self.passage_prefix + t for t in texts])

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_batch([self.query_prefix + text])[0]
