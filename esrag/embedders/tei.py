"""``tei``: Text Embeddings Inference, Hugging Face Inference Endpoints and the Inference API.

``url`` is the server's root (TEI answers ``POST /`` like ``/embed``) or an endpoint's URL. Each request is
what ``huggingface_hub.InferenceClient.feature_extraction`` sends: ``{"inputs": [...], "normalize": true,
"truncate": true}`` (TEI truncates a text longer than the model reads, a long query, instead of refusing
it), answered by one row of numbers per input. It is sent with esrag's own HTTP client rather than through
``InferenceClient``: huggingface_hub's offline mode (``HF_HUB_OFFLINE=1``, which esrag deployments set so
that models load from local files only) blocks every request that client makes, a local TEI's included.
Sizing, retries, errors and checks: ``esrag.embedders.remote``. Thread-safe.
"""

from __future__ import annotations

from typing import Any

from esrag.embedders.remote import Malformed, RemoteEmbedder, entry_point

NAME = "tei"


class TEIEmbedder(RemoteEmbedder):
    plugin = NAME

    def _post(self, texts: list[str]) -> Any:
        rows = self._http.post("", {"inputs": texts, "normalize": True, "truncate": True})
        if not isinstance(rows, list):
            raise Malformed("expected a list of vectors")
        return rows


#: the ``tei`` entry point: ``[embedder.tei]`` settings (url required)
from_settings = entry_point(TEIEmbedder)
