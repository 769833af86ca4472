"""The fingerprint of an embedding model: its vectors of a few fixed probe texts, recorded in the index meta.

A served model can hide behind any name, so the name and dims the index records do not prove that the
configured embedder is the model the index was built with. The fingerprint does: the vectors of
``PROBES`` (raw, without prefixes), as float16, base64-encoded with a version and shape header
(``v1:3x384:...``, about 3 KB for 384 dims).

Two fingerprints are of the same model when every probe's vectors have a cosine of at least
``MIN_COSINE`` (0.99). The same weights give cosines above 0.9999 across machines, backends (torch on CPU,
fp16 on CUDA, an Infinity or TEI server) and float16 rounding; another model, even one of the same
architecture and size, gives far less (unrelated vector spaces: about 0; the packaged MiniLM against a copy
with 5% noise on its weights: see tests/integration/test_remote_embedders.py). A fine-tuned model is another
model.

- ``compute(embedder)``: the embedder's fingerprint, computed once per embedder object (thread-safe).
- ``check(meta, embedder, where)``: ModelMismatchError when ``meta`` has a fingerprint and the embedder's
  differs; nothing when the index has none (made before fingerprints: it gets one on its next ingest).
- ``check_and_record(store, embedder)``: at ingest, check, or record the fingerprint of an index that has
  none (through ``Store.ensure_index``: the fingerprint is one of the meta's updatable build parameters).
"""

from __future__ import annotations

import base64
import dataclasses
import threading
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np

from esrag.errors import ModelMismatchError

if TYPE_CHECKING:
    from esrag.embedders.base import Embedder
    from esrag.stores.base import Store
    from esrag.types import IndexMeta

VERSION = "v1"
PROBES = (
    "esrag fingerprint: the quick brown fox jumps over the lazy dog.",
    "Wie viele Einwohner hat Berlin? 3,7 Millionen (2023).",
    "def add(a, b):\n    return a + b  # SELECT * FROM chunks WHERE id = 42",
)
#: probe cosines at or above this are the same model (see the module docstring)
MIN_COSINE = 0.99

_CACHE: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _real(embedder: Embedder) -> Any:
    """The object that holds the model: a LazyEmbedder's loaded embedder, else the embedder itself."""
    get = getattr(type(embedder), "get", None)
    return get(embedder) if callable(get) else embedder


def encode(vectors: np.ndarray) -> str:
    """``vectors`` (probes x dims) as a fingerprint string."""
    rows, dims = vectors.shape
    raw = np.ascontiguousarray(vectors, dtype="<f2").tobytes()
    return f"{VERSION}:{rows}x{dims}:{base64.b64encode(raw).decode('ascii')}"


def decode(fingerprint: str) -> np.ndarray | None:
    """The probe vectors of a fingerprint (float32); None for an unknown version or a damaged string."""
    try:
        version, shape, data = fingerprint.split(":", 2)
        rows, dims = (int(x) for x in shape.split("x"))
        if version != VERSION:
            return None
        arr = np.frombuffer(base64.b64decode(data, validate=True), dtype="<f2").astype(np.float32)
        return arr.reshape(rows, dims)
    except (ValueError, TypeError):
        return None


def compute(embedder: Embedder) -> str:
    """The embedder's fingerprint (embeds ``PROBES`` once per embedder object)."""
    real = _real(embedder)
    with _LOCK:
        found = _CACHE.get(real)
    if found is not None:
        return found
    fp = encode(np.asarray(real.embed_batch(list(PROBES)), dtype=np.float32))
    with _LOCK:
        _CACHE[real] = fp
    return fp


def similarity(a: str, b: str) -> float:
    """The lowest probe cosine between two fingerprints; -1.0 when they cannot be compared (another
    version, shape or probe set, or damaged)."""
    va, vb = decode(a), decode(b)
    if va is None or vb is None or va.shape != vb.shape:
        return -1.0
    na, nb = np.linalg.norm(va, axis=1), np.linalg.norm(vb, axis=1)
    if not np.all(na > 0) or not np.all(nb > 0):
        return -1.0
    return float(np.min(np.sum(va * vb, axis=1) / (na * nb)))


def same_model(a: str, b: str) -> bool:
    return similarity(a, b) >= MIN_COSINE


def describe(embedder: Embedder) -> str:
    """Where the embedder's vectors come from, for messages: a server's URL or "in-process"."""
    real = _real(embedder)
    url = getattr(real, "shown_url", None)
    return f"the embedding server at {url}" if url else "the in-process model"


def check(meta: IndexMeta, embedder: Embedder, where: str) -> None:
    """ModelMismatchError when the index ``meta`` (at ``where``) records a fingerprint that the embedder's
    does not match; nothing when it records none."""
    if not meta.fingerprint:
        return
    mine = compute(embedder)
    score = similarity(meta.fingerprint, mine)
    if score < MIN_COSINE:
        raise ModelMismatchError(
            f"index {where} was built with another model than {describe(embedder)} serves, though both are "
            f"named {meta.model!r}: their vectors of the same probe texts differ (cosine {score:.3f}, "
            f"{MIN_COSINE} needed); point the embedder at the model the index was built with, or ingest into "
            f"a new index")


def check_and_record(store: Store, embedder: Embedder) -> None:
    """At ingest: ``check`` against the index's fingerprint, or record the embedder's when the index has
    none. Nothing when the index does not exist."""
    meta = store.read_meta()
    if meta is None:
        return
    d = store.describe()
    if meta.fingerprint:
        check(meta, embedder, f"{d.get('index', '')!r} at {d.get('location', '')}")
    else:
        store.ensure_index(dataclasses.replace(meta, fingerprint=compute(embedder)))


_CHECKED: weakref.WeakSet[Any] = weakref.WeakSet()


def check_once(owner: object, store: Store, embedder: Embedder) -> None:
    """``check_and_record`` once per ``owner`` (an ingest run): later windows of the same run skip it."""
    with _LOCK:
        if owner in _CHECKED:
            return
    check_and_record(store, embedder)
    with _LOCK:
        _CHECKED.add(owner)
