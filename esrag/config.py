"""Settings, resolved once: defaults < esrag.toml < ESRAG_* environment < explicit arguments (CLI flags, API).

Every field can be set in ``esrag.toml`` under the same name (flat, or in an ``[esrag]`` table), and in the
environment as ``ESRAG_<NAME>`` (``ESRAG_ES_URL``, ``ESRAG_ALPHA``...). Values are validated by pydantic,
one source at a time, so an error names the key, where it came from (the file, the variable or the flag)
and what was expected. The resolved Settings object is passed down; nothing below the CLI and the API reads
the environment.

Which ``esrag.toml``: ``ESRAG_CONFIG`` if set (the file must exist), else the project's: the nearest
directory, from the working directory upwards, that holds ``esrag.toml`` or ``.esrag/`` (as git finds its
repository). The embedded store's default directory is that project's ``.esrag/``; a relative
``sqlite_dir`` in the file is relative to the file.

Plugins keep their own settings out of ``Settings``: a ``[embedder.NAME]`` (or ``[store.NAME]``,
``[generator.NAME]``) table in the file and ``ESRAG_EMBEDDER_NAME_KEY`` variables reach the plugin through
``Settings.plugin_options``; the plugin validates them (``esrag.plugins.plugin_settings``).

Settings is frozen and safe to share between threads. Secrets (``es_password``, ``es_api_key``,
``llm_api_key``) are left out of ``repr``; ``esrag config show`` masks them.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from esrag.errors import ConfigError
from esrag.ingest.context import DEFAULT_TEMPLATE, check_template
from esrag.redact import redact_url

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
CONFIG_ENV = "ESRAG_CONFIG"
DEFAULT_CONFIG_FILE = "esrag.toml"
PROJECT_DIR = ".esrag"

Mode = Literal["hybrid", "bm25", "dense"]
Fusion = Literal["linear", "rrf"]
Normalization = Literal["minmax", "zscore", "none"]
IndexOptions = Literal["hnsw", "int8_hnsw", "bbq_hnsw", "flat", "int8_flat"]
Quantize = Literal["auto", "4bit", "none"]
Similarity = Literal["cosine", "dot_product", "max_inner_product", "l2_norm"]

MODES: tuple[str, ...] = get_args(Mode)
FUSIONS: tuple[str, ...] = get_args(Fusion)
NORMALIZATIONS: tuple[str, ...] = get_args(Normalization)
INDEX_OPTIONS: tuple[str, ...] = get_args(IndexOptions)
QUANTIZE: tuple[str, ...] = get_args(Quantize)
SIMILARITIES: tuple[str, ...] = get_args(Similarity)
SECRETS = frozenset({"es_password", "es_api_key", "llm_api_key"})
#: URL settings that may carry ``user:password@``: shown without it (``esrag.redact``)
URL_SETTINGS = frozenset({"es_url", "llm_url"})
#: the plugin kinds whose settings tables are passed through to plugins
PLUGIN_KINDS = ("store", "embedder", "generator", "source")

def check_alpha(alpha: float) -> float:
    """``alpha`` if it is a number in [0, 1]; ConfigError (a ValueError) otherwise, NaN included. The one
    definition that settings, CLI flags, API bodies, search and fusion all use."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be between 0 and 1, got {alpha}", field="alpha")
    return alpha


Alpha = Annotated[float, AfterValidator(check_alpha)]


def check_doc_weight(weight: float) -> float:
    """``weight`` if it is a number in [0, 1]; ConfigError otherwise, NaN included (see check_alpha)."""
    if not 0.0 <= weight <= 1.0:
        raise ConfigError(f"doc_weight must be between 0 and 1, got {weight}", field="doc_weight")
    return weight


DocWeight = Annotated[float, AfterValidator(check_doc_weight)]


def _unescape_newlines(value: Any) -> Any:
    return value.replace("\\n", "\n") if isinstance(value, str) else value

_FROZEN = ConfigDict(frozen=True, extra="forbid", validate_default=True)


class StoreSettings(BaseModel):
    """Which store holds the index, and its name."""

    model_config = _FROZEN
    store: str | None = None  # None: elasticsearch if es_url is set, else sqlite
    index: str = "esrag"
    sqlite_dir: str = PROJECT_DIR  # the embedded store's directory
    # the embedded store's kNN: exact always (for evaluation), else an HNSW index from this many chunks on
    exact_knn: bool = False
    ann_min_chunks: int = Field(50_000, ge=0)


class ElasticsearchSettings(BaseModel):
    """The Elasticsearch connection and the index it creates."""

    model_config = _FROZEN
    es_url: str | None = None
    es_api_key: str | None = Field(None, repr=False)
    es_username: str | None = None
    es_password: str | None = Field(None, repr=False)
    es_ca_certs: str | None = None
    es_verify_certs: bool = True
    es_timeout: float = Field(30.0, gt=0)
    es_connect_timeout: float = Field(5.0, gt=0)
    # how long writes keep retrying 429/502/503/504 and connection errors without progress, in seconds
    es_retry_seconds: float = Field(60.0, ge=0)
    index_options: IndexOptions = "int8_hnsw"
    similarity: Similarity = "cosine"
    analyzer: str = "english"  # docs/evaluation.md: chosen across the evaluation sets


class EmbeddingSettings(BaseModel):
    """The embedder plugin and its model."""

    model_config = _FROZEN
    embedder: str = "sentence_transformers"
    model: str = DEFAULT_MODEL
    query_prefix: str = ""
    passage_prefix: str = ""
    device: str | None = None  # None: cuda if available, else cpu
    batch_size: int = Field(64, ge=1)


class ChunkingSettings(BaseModel):
    """Chunk sizes, in the embedder's tokens, and what each chunk's embedded text says (esrag/ingest/context.py)."""

    model_config = _FROZEN
    chunk_size: int = Field(256, ge=1)
    chunk_overlap: int = Field(32, ge=0)
    # a literal backslash-n (as typed in a shell) is a line break
    embed_template: Annotated[str, BeforeValidator(_unescape_newlines), AfterValidator(check_template)] = (
        DEFAULT_TEMPLATE)


class RetrievalSettings(BaseModel):
    """Hybrid retrieval defaults; every search may override them."""

    model_config = _FROZEN
    mode: Mode = "hybrid"
    # with zscore and doc_weight 0.75: the best fusion over all the evaluation sets (docs/evaluation.md)
    alpha: Alpha = 0.65
    fusion: Fusion = "linear"
    normalization: Normalization = "zscore"
    # each chunk's score mixed with its section's opening chunk's (esrag/retrieval/fusion.py); docs/evaluation.md
    doc_weight: DocWeight = 0.75
    # a query that is one identifier or a quoted phrase (esrag.retrieval.search.is_lookup): BM25 is the evidence there
    lookup_alpha: Alpha = 0.2
    rrf_k: int = Field(60, ge=1)
    candidates: int = Field(100, ge=1)
    k: int = Field(10, ge=1)


class GenerationSettings(BaseModel):
    """The generator plugin (the LLM) and how answers are made."""

    model_config = _FROZEN
    generator: str | None = None  # None: openai_compat if llm_url is set, else extractive
    llm_url: str | None = None
    llm_model: str | None = None
    llm_api_key: str | None = Field(None, repr=False)
    llm_timeout: float = Field(300.0, gt=0)
    llm_context_tokens: int | None = Field(None, ge=1)  # None: ask the server / read the model config
    cache_dir: str | None = None  # None: $XDG_CACHE_HOME/esrag or ~/.cache/esrag
    max_new_tokens: int = Field(512, ge=1)
    temperature: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    quantize: Quantize = "auto"  # auto | 4bit | none
    min_score: float = Field(0.0, allow_inf_nan=False)
    rag_k: int = Field(5, ge=1)
    # generators that decode in-process make every sentence cite a source (esrag/generators/citations.py)
    force_citations: bool = True
    # in-process decoding: ban repeating an n-gram of the answer's own tokens (0: off), penalise reused tokens
    no_repeat_ngram_size: int = Field(4, ge=0)
    repetition_penalty: float = Field(1.1, ge=1.0, allow_inf_nan=False)
    # cut an answer where it starts repeating itself (esrag/answering/checks.py find_loop)
    stop_on_loop: bool = True
    # a cited sentence is supported when its score against the cited passage reaches this (0..1)
    support_threshold: float = Field(0.5, ge=0.0, le=1.0)


class Settings(GenerationSettings, RetrievalSettings, ChunkingSettings, EmbeddingSettings, ElasticsearchSettings,
               StoreSettings):
    """All settings. Grouped by concern in the base classes above; read flat (``settings.es_url``)."""

    model_config = _FROZEN
    #: "<kind>.<name>" -> {key: value} for plugin settings tables (see the module docstring)
    plugin_options: Mapping[str, Mapping[str, Any]] = Field(default_factory=dict, repr=False)
    #: setting name -> where its value came from ("esrag.toml at PATH", "ESRAG_X", "--flag"...)
    sources: Mapping[str, str] = Field(default_factory=dict, repr=False, exclude=True)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise ConfigError(_describe(e, data.get("sources") or {})) from None

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(f"chunk_overlap must be smaller than chunk_size ({self.chunk_size}), got "
                             f"{self.chunk_overlap}")
        if not self.index or self.index != self.index.lower() or any(c in self.index for c in ' "*\\<|,>/?'):
            raise ValueError(f"invalid index name {self.index!r}: use lowercase letters, digits, '-' and '_'")
        return self

    @property
    def store_name(self) -> str:
        """The store to use: explicit choice, else elasticsearch when an ES URL is configured, else sqlite."""
        if self.store:
            return self.store
        return "elasticsearch" if self.es_url else "sqlite"

    @property
    def generator_name(self) -> str:
        """The generator to use: explicit choice, else openai_compat when an LLM URL is set, else extractive
        (no LLM: the passages' best sentences, each cited; measured in scripts/bench_answers.py, it is the
        only generator available offline whose cited sentences all hold, at a fraction of a second)."""
        if self.generator:
            return self.generator
        return "openai_compat" if self.llm_url else "extractive"

    def replace(self, **changes: Any) -> Settings:
        """A copy with the non-None ``changes`` applied (validated like any other source)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if not changes:
            return self
        data = self.model_dump(exclude={"sources"})
        data.update(changes)
        return Settings(**data, sources={**self.sources, **dict.fromkeys(changes, "argument")})

    def __repr_args__(self) -> Any:
        """What ``repr`` shows: secrets are left out by their fields, URLs lose their credentials here."""
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name in URL_SETTINGS and isinstance(value, str) else value

    def resolved(self, masked: bool = True) -> dict[str, dict[str, Any]]:
        """Every setting with its value and where it came from, secrets masked (URL credentials removed):
        for ``esrag config show``."""
        out: dict[str, dict[str, Any]] = {}
        for name in _field_names():
            value = getattr(self, name)
            if masked and name in SECRETS and value:
                value = "****"
            elif masked and name in URL_SETTINGS and isinstance(value, str):
                value = redact_url(value)
            out[name] = {"value": value, "source": self.sources.get(name, "default")}
        return out

    @classmethod
    def load(
        cls,
        overrides: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        config_file: str | Path | None = None,
        override_source: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Settings:
        """Resolve settings: defaults < config file < environment < ``overrides`` (None values ignored).

        ``override_source`` names where each override came from (``--alpha``); the default is "argument".
        """
        env = os.environ if env is None else env
        cwd = cwd or Path.cwd()
        path, root = find_config(env, config_file, cwd)
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        plugin_opts: dict[str, dict[str, Any]] = {}
        if path is not None and path.is_file():
            where = f"{path}"
            data = read_toml(path)
            for kind in PLUGIN_KINDS:
                for name, table in (data.pop(kind, None) or {}).items():
                    if not isinstance(table, dict):
                        raise ConfigError(f"{path}: [{kind}.{name}] must be a table")
                    plugin_opts.setdefault(f"{kind}.{name}", {}).update(table)
            for key, value in data.items():
                values[key] = _validate_one(key, value, where, strict=True)
                sources[key] = where
            if "sqlite_dir" in data and not Path(str(values["sqlite_dir"])).is_absolute():
                values["sqlite_dir"] = str(path.parent / str(values["sqlite_dir"]))
        if "sqlite_dir" not in values and root is not None:
            values["sqlite_dir"] = str(root / PROJECT_DIR)
            sources["sqlite_dir"] = f"project at {root}"
        names = _field_names()
        for key, raw in env.items():
            if not key.startswith("ESRAG_") or raw == "":
                continue
            name = key[len("ESRAG_"):].lower()
            if name in names:
                values[name] = _validate_one(name, raw, key, strict=False)
                sources[name] = key
            else:
                kind, _, rest = name.partition("_")
                if kind in PLUGIN_KINDS and rest:
                    # ESRAG_<KIND>_<NAME>_<KEY>: split at the plugin's name when the plugin asks
                    plugin_opts.setdefault(f"{kind}:env", {})[rest] = raw
        for key, value in (overrides or {}).items():
            if value is None:
                continue
            where = (override_source or {}).get(key, "argument")
            if key not in names:
                raise ConfigError(f"unknown setting {key!r} ({where})", field=key)
            values[key] = _validate_one(key, value, where, strict=False)
            sources[key] = where
        sqlite_dir = Path(str(values.get("sqlite_dir", PROJECT_DIR))).expanduser()
        if not sqlite_dir.is_absolute():  # where a relative directory was meant when it was given: here
            values["sqlite_dir"] = str(cwd / sqlite_dir)
        return cls(**values, plugin_options=plugin_opts, sources=sources)


def _field_names() -> tuple[str, ...]:
    return tuple(n for n in Settings.model_fields if n not in ("plugin_options", "sources"))


def _validate_one(name: str, value: Any, where: str, strict: bool) -> Any:
    """Validate one value of one field, naming the key, the source and what was expected on error."""
    field = Settings.model_fields.get(name)
    if field is None or name in ("plugin_options", "sources"):
        known = ", ".join(_field_names())
        raise ConfigError(f"unknown setting {name!r} in {where} (known settings: {known})")
    annotation: Any = Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation
    adapter: TypeAdapter[Any] = TypeAdapter(annotation)
    try:
        return adapter.validate_python(value, strict=strict)
    except ValidationError as e:
        err = e.errors()[0]
        raise ConfigError(f"{name} = {value!r} in {where}: {name} {_expected(err, field.annotation)}"
                          if str(err.get("type")) in _BOUNDS else
                          f"{name} = {value!r} in {where}: {_expected(err, field.annotation)}", field=name) from None


_BOUNDS = {"greater_than_equal": ("ge", "at least"), "less_than_equal": ("le", "at most"),
           "greater_than": ("gt", "greater than"), "less_than": ("lt", "less than")}


def _plain(err: Mapping[str, Any]) -> str:
    """pydantic's message, said plainly: "must be at least 1" rather than "Input should be greater..."."""
    bound = _BOUNDS.get(str(err.get("type")))
    if bound is not None and err.get("ctx"):
        return f"must be {bound[1]} {err['ctx'][bound[0]]}, got {err.get('input')!r}"
    return str(err.get("msg", "invalid value")).removeprefix("Value error, ")


def _expected(err: Mapping[str, Any], annotation: Any) -> str:
    msg = _plain(err)
    if err.get("type") == "value_error" or str(err.get("type")) in _BOUNDS:
        return msg
    kind = _type_name(annotation)
    return f"{msg} (expected {kind})" if kind and kind not in msg else msg


def _type_name(annotation: Any) -> str:
    args = [a for a in get_args(annotation) if a is not type(None)]
    if getattr(annotation, "__origin__", None) is Literal:
        return "one of " + ", ".join(map(str, get_args(annotation)))
    if args and len(args) == 1:
        return _type_name(args[0])
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(annotation, "")


def _describe(e: ValidationError, sources: Mapping[str, str]) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = _plain(err)
        if loc:
            where = sources.get(loc, "")
            sep = " " if str(err.get("type")) in _BOUNDS else ": "
            parts.append(f"{loc}{sep}{msg}" + (f" (from {where})" if where else ""))
        else:
            involved = sorted({n for n in sources if n in msg})
            origin = ", ".join(f"{n} from {sources[n]}" for n in involved)
            parts.append(msg + (f" ({origin})" if origin else ""))
    return "; ".join(parts)


def find_project(cwd: Path) -> Path | None:
    """The nearest directory, from ``cwd`` upwards, that holds ``esrag.toml`` or ``.esrag/``; None if none."""
    for d in (cwd, *cwd.parents):
        if (d / DEFAULT_CONFIG_FILE).is_file() or (d / PROJECT_DIR).is_dir():
            return d
    return None


def find_config(env: Mapping[str, str], config_file: str | Path | None, cwd: Path) -> tuple[Path | None, Path | None]:
    """(config file to read or None, project root or None). ``ESRAG_CONFIG`` or an explicit file must exist."""
    explicit = config_file or env.get(CONFIG_ENV)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            source = "--config" if config_file else CONFIG_ENV
            raise ConfigError(f"config file {path} (from {source}) does not exist; create it (it may be empty) "
                              f"or unset {CONFIG_ENV}")
        root = find_project(cwd)
        return path, root
    root = find_project(cwd)
    if root is None:
        return None, None
    path = root / DEFAULT_CONFIG_FILE
    return (path if path.is_file() else None), root


def config_path(env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Path:
    """The file ``tune --save`` writes: ``ESRAG_CONFIG``, else the project's ``esrag.toml`` (created in the
    working directory when there is no project)."""
    env = os.environ if env is None else env
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV]).expanduser()
    cwd = cwd or Path.cwd()
    root = find_project(cwd)
    return (root or cwd) / DEFAULT_CONFIG_FILE


def save_settings(updates: Mapping[str, Any], path: Path | None = None) -> Path:
    """Merge ``updates`` into the TOML config file (created if missing) and return its path, keeping the
    file's permissions, other tables and comments (see ``esrag.config_file``)."""
    from esrag import config_file

    return config_file.save_settings(updates, path or config_path())


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from e
    # Accept both a flat file and one with an [esrag] table.
    if "esrag" in data and isinstance(data["esrag"], dict):
        flat = dict(data["esrag"])
        for kind in PLUGIN_KINDS:
            if kind in data:
                flat[kind] = data[kind]
        return flat
    return dict(data)
