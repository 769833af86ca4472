"""``openai_compat``: any server speaking OpenAI's ``POST /v1/embeddings`` (TEI, vLLM, Infinity, llama.cpp,
Ollama, OpenAI itself).

``url`` is the base URL as OpenAI clients take it: ``/embeddings`` is appended (``http://host:8000/v1`` for
vLLM and TEI, ``http://host:7997`` for Infinity, whose routes have no ``/v1`` unless started with
``--url-prefix /v1``). The request is ``{"model": ..., "input": [...], "encoding_format": "float"}``; the
answer's ``data[].embedding`` rows are put back in input order by their ``index``. Sizing, retries, errors
and checks: ``esrag.embedders.remote``. Thread-safe.
"""

from __future__ import annotations

from typing import Any

from esrag.embedders.remote import Malformed, RemoteEmbedder, entry_point

NAME = "openai_compat"


class OpenAICompatEmbedder(RemoteEmbedder):
    plugin = NAME

    def _post(self, texts: list[str]) -> Any:
        answer = self._http.post("/embeddings", {"model": self.served_model, "input": texts,
                                                 "encoding_format": "float"})
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list) or len(data) != len(texts):
            raise Malformed(f"expected {{'data': [...]}} with {len(texts)} entries")
        rows: list[Any] = [None] * len(texts)
        for pos, item in enumerate(data):
            if not isinstance(item, dict) or "embedding" not in item:
                raise Malformed("an entry of 'data' has no 'embedding'")
            index = item.get("index", pos)
            if not isinstance(index, int) or not 0 <= index < len(texts) or rows[index] is not None:
                raise Malformed(f"an entry of 'data' has a bad index {index!r}")
            rows[index] = item["embedding"]
        return rows


#: the ``openai_compat`` entry point: ``[embedder.openai_compat]`` settings (url required)
from_settings = entry_point(OpenAICompatEmbedder)
