"""The model's tokenizer, loaded locally, for an embedder whose model runs elsewhere (a remote server).

Chunk sizes are counted in the model's own tokens. A remote embedder cannot count them for us, so the
tokenizer is loaded from a local directory (or a model name a package ships, or one already in the Hugging
Face cache), never downloaded at run time: ``local_files_only``. When it cannot be found the error says
where it looked and how to point esrag at it; esrag never falls back to guessing from characters.

The longest text the model reads (``max_tokens``, special tokens excluded) is the sentence-transformers
``max_seq_length`` when the directory has a ``sentence_bert_config.json`` (so chunks match the local
embedder's exactly), else the tokenizer's ``model_max_length``, capped at 8192.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from esrag.errors import ConfigError

#: a tokenizer's "no limit" model_max_length (1e30) and absurd ones are capped at this
MAX_TOKENS_CAP = 8192


@dataclass(frozen=True)
class LocalTokenizer:
    """A thread-safe token counter (``count``) and the model's text limit in tokens (``max_tokens``)."""

    count: Callable[[list[str]], list[int]]
    max_tokens: int
    path: str


def load_tokenizer(name: str, max_tokens: int | None = None, where: str = "the tokenizer setting"
                   ) -> LocalTokenizer:
    """Load the tokenizer of ``name`` (a local directory, a packaged model name, or a hub id already in the
    local cache) without any network access. ConfigError naming ``name`` and ``where`` (the setting that
    chooses it) when it cannot be found or read; ``max_tokens`` overrides the limit read from the model's
    files."""
    from esrag.embedders.sentence_transformers import _private_counter, resolve_model_path

    path = resolve_model_path(name)
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:  # OSError, ValueError, HF errors: all mean "not here"
        raise ConfigError(
            f"cannot load the tokenizer {name!r} locally (from {path}): {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}; chunking counts the model's tokens, so give a local "
            f"directory holding the model's tokenizer files in {where}", field="tokenizer") from e
    special = int(tokenizer.num_special_tokens_to_add())
    limit = max_tokens if max_tokens is not None else _model_limit(Path(path), tokenizer) - special
    return LocalTokenizer(count=_private_counter(tokenizer), max_tokens=max(1, limit), path=str(path))


def _model_limit(path: Path, tokenizer: object) -> int:
    """The model's sequence limit in tokens, special tokens included (see the module docstring)."""
    st_config = path / "sentence_bert_config.json"
    if st_config.is_file():
        try:
            value = json.loads(st_config.read_text()).get("max_seq_length")
            if isinstance(value, int) and value > 0:
                return min(value, MAX_TOKENS_CAP)
        except (OSError, ValueError):
            pass
    value = getattr(tokenizer, "model_max_length", None)
    return min(int(value), MAX_TOKENS_CAP) if isinstance(value, int | float) and value > 0 else 512
