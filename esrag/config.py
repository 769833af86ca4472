"""Settings, resolved once: defaults < esrag.toml < ESRAG_* environment < explicit arguments (CLI flags).

Every field can be set in ``esrag.toml`` (path from ``ESRAG_CONFIG``, default ``./esrag.toml``) under the
same name, and in the environment as ``ESRAG_<NAME>`` (``ESRAG_ES_URL``, ``ESRAG_ALPHA``...). The resolved
Settings object is passed down; nothing below the CLI reads the environment.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_type_hints

from esrag.errors import ConfigError

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
CONFIG_ENV = "ESRAG_CONFIG"
DEFAULT_CONFIG_FILE = "esrag.toml"

FUSIONS = ("linear", "rrf")
NORMALIZATIONS = ("minmax", "zscore", "none")
MODES = ("hybrid", "bm25", "dense")
INDEX_OPTIONS = ("hnsw", "int8_hnsw", "bbq_hnsw", "flat", "int8_flat")
QUANTIZE = ("auto", "4bit", "none")
GENERATORS = ("openai_compat", "transformers_local", "none")
SIMILARITIES = ("cosine", "dot_product", "max_inner_product", "l2_norm")


@dataclass(frozen=True)
class Settings:
    # store selection
    store: str | None = None  # None: elasticsearch if es_url is set, else sqlite
    index: str = "esrag"
    # Elasticsearch connection
    es_url: str | None = None
    es_api_key: str | None = None
    es_username: str | None = None
    es_password: str | None = None
    es_ca_certs: str | None = None
    es_verify_certs: bool = True
    es_timeout: float = 30.0
    es_connect_timeout: float = 5.0
    # Elasticsearch index settings
    index_options: str = "int8_hnsw"
    similarity: str = "cosine"
    analyzer: str = "standard"
    # embedded store
    sqlite_dir: str = ".esrag"
    # embedding
    model: str = DEFAULT_MODEL
    query_prefix: str = ""
    passage_prefix: str = ""
    device: str | None = None  # None: cuda if available, else cpu
    batch_size: int = 64
    # chunking, in the embedder's tokens
    chunk_size: int = 256
    chunk_overlap: int = 32
    # retrieval
    mode: str = "hybrid"
    alpha: float = 0.5
    fusion: str = "linear"
    normalization: str = "minmax"
    rrf_k: int = 60
    candidates: int = 100
    k: int = 10
    # generation
    generator: str | None = None  # None: openai_compat if llm_url is set, else transformers_local
    llm_url: str | None = None
    llm_model: str | None = None
    llm_api_key: str | None = None
    llm_timeout: float = 300.0
    llm_context_tokens: int | None = None  # None: ask the server / read the model config
    cache_dir: str | None = None  # None: $XDG_CACHE_HOME/esrag or ~/.cache/esrag
    max_new_tokens: int = 512
    temperature: float = 0.0
    quantize: str = "auto"  # auto | 4bit | none
    min_score: float = 0.0
    rag_k: int = 5
    # generators that decode in-process make every sentence cite a source (esrag/generators/citations.py)
    force_citations: bool = True

    def __post_init__(self) -> None:
        _check_choice("fusion", self.fusion, FUSIONS)
        _check_choice("normalization", self.normalization, NORMALIZATIONS)
        _check_choice("mode", self.mode, MODES)
        _check_choice("index_options", self.index_options, INDEX_OPTIONS)
        _check_choice("similarity", self.similarity, SIMILARITIES)
        _check_choice("quantize", self.quantize, QUANTIZE)
        if self.generator is not None:
            _check_choice("generator", self.generator, GENERATORS)
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha must be between 0 and 1, got {self.alpha}")
        for name in ("batch_size", "chunk_size", "candidates", "k", "rrf_k", "max_new_tokens", "rag_k"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.chunk_overlap < self.chunk_size:
            raise ConfigError(
                f"chunk_overlap must be >= 0 and smaller than chunk_size ({self.chunk_size}), "
                f"got {self.chunk_overlap}"
            )
        if not self.index or self.index != self.index.lower() or any(c in self.index for c in ' "*\\<|,>/?'):
            raise ConfigError(
                f"invalid index name {self.index!r}: use lowercase letters, digits, '-' and '_'"
            )

    @property
    def store_name(self) -> str:
        """The store to use: explicit choice, else elasticsearch when an ES URL is configured, else sqlite."""
        if self.store:
            return self.store
        return "elasticsearch" if self.es_url else "sqlite"

    @property
    def generator_name(self) -> str:
        """The generator to use: explicit choice, else openai_compat when an LLM URL is set, else
        transformers_local."""
        if self.generator:
            return self.generator
        return "openai_compat" if self.llm_url else "transformers_local"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def load(
        cls,
        overrides: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        config_file: str | Path | None = None,
    ) -> Settings:
        """Resolve settings: defaults < config file < environment < ``overrides`` (None values ignored)."""
        env = os.environ if env is None else env
        path = Path(config_file or env.get(CONFIG_ENV) or DEFAULT_CONFIG_FILE)
        values: dict[str, Any] = {}
        if path.is_file():
            values.update(_read_toml(path))
        elif config_file:
            raise ConfigError(f"config file not found: {path}")
        # A missing ESRAG_CONFIG file is an empty config: `esrag tune --save` creates it.
        hints = get_type_hints(cls)
        for f in fields(cls):
            raw = env.get(f"ESRAG_{f.name.upper()}")
            if raw is not None and raw != "":
                values[f.name] = _coerce(f.name, raw, hints[f.name])
        for key, value in (overrides or {}).items():
            if value is not None:
                values[key] = value
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown setting(s) in {path}: {', '.join(sorted(unknown))}")
        return cls(**values)


def config_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get(CONFIG_ENV) or DEFAULT_CONFIG_FILE)


def save_settings(updates: Mapping[str, Any], path: Path | None = None) -> Path:
    """Merge ``updates`` into the TOML config file (created if missing) and return its path.

    Written to a temporary file and renamed, so an interrupted save never leaves a half-written config.
    """
    import tomli_w

    path = path or config_path()
    current = _read_toml(path) if path.is_file() else {}
    current.update(updates)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(tomli_w.dumps(current), encoding="utf-8")
    os.replace(tmp, path)
    return path


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from e
    # Accept both a flat file and one with an [esrag] table.
    return dict(data.get("esrag", data))


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _coerce(name: str, raw: str, hint: Any) -> Any:
    text = str(hint)
    try:
        if "bool" in text:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if "float" in text:
            return float(raw)
        if "int" in text:
            return int(raw)
    except ValueError as e:
        raise ConfigError(f"environment variable ESRAG_{name.upper()}={raw!r} is not a valid {hint}") from e
    return raw
