"""esrag's error hierarchy. Library code raises these (wrapping the cause with ``raise ... from e``); only
the CLI and API turn them into messages and exit codes."""

from __future__ import annotations


class EsragError(Exception):
    """Base of every error esrag raises on purpose. ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class ConfigError(EsragError, ValueError):
    """Bad configuration or arguments (exit code 2, like a usage error). Also a ValueError: a bad value."""

    exit_code = 2


class MissingDependencyError(EsragError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(f"{purpose} needs the '{package}' package (the esrag[{extra}] extra): run "
                         f"`pip install -e '.[{extra}]'` in your esrag checkout, or `pip install {package}`")
        self.package = package
        self.extra = extra


class PluginNotFoundError(ConfigError):
    """No store/generator/embedder registered under that name."""


class LoaderError(EsragError):
    """A file could not be read or parsed."""


class StoreError(EsragError):
    """A store operation failed."""


class StoreConnectionError(StoreError):
    """The store is unreachable (wrong URL, server down, TLS/auth failure at connect time)."""


class IndexNotFoundError(StoreError):
    """The index does not exist (run ``esrag init`` or ``esrag ingest`` first)."""


class ModelMismatchError(StoreError):
    """The index was built with another embedding model or dimension than the one configured."""

    @classmethod
    def of(cls, where: str, built_model: str, built_dims: int, model: str, dims: int) -> ModelMismatchError:
        """The one message for every place that finds the mismatch (ingest, search, evaluation)."""
        return cls(f"index {where} was built with model {built_model!r} ({built_dims} dims), but the "
                   f"configured model is {model!r} ({dims} dims); use --model {built_model!r} or ingest into "
                   "a new index (--index NAME)")


class CorruptStoreError(StoreError):
    """The store file exists but is not a valid esrag store."""


class BulkWriteError(StoreError):
    """Some chunks failed to write; ``errors`` holds one WriteError per failed chunk."""

    def __init__(self, message: str, errors: tuple[object, ...]) -> None:
        super().__init__(message)
        self.errors = errors


class EmbeddingError(EsragError):
    """The embedding model could not be loaded or failed."""


class GeneratorError(EsragError):
    """The LLM could not be reached or failed. ``partial`` holds any answer text streamed before it did."""

    def __init__(self, message: str, partial: str = "") -> None:
        super().__init__(message)
        self.partial = partial
