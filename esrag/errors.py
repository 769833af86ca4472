"""esrag's error hierarchy. Library code raises these (wrapping the cause with ``raise ... from e``); only
the CLI and API turn them into messages and exit codes.

Each class carries what the two faces need: ``exit_code`` for the CLI, ``http_status`` and ``problem`` (the
problem type's name, one status per name) for the API. A class never covers two statuses: a timeout or a
refusal is its own subclass, so nothing matches message text to choose a status.

A message that names a setting does so with ``setting(name)``, and each face words it: the CLI as its flag
(``--max-new-tokens``), the API as the request's JSON field or as the server's setting; ``str(error)`` reads
the setting's name. ``field`` names the setting or argument at fault (``generator``, ``question``), for the
API's ``errors[].field``; None when no one input is.
"""

from __future__ import annotations

import re
from collections.abc import Callable

#: how ``setting(name)`` marks a setting inside a message (the ASCII unit separator around the name)
_MARK = "\x1f"
_REF = re.compile(f"{_MARK}([A-Za-z_][A-Za-z0-9_.]*){_MARK}")


def setting(name: str) -> str:
    """``name`` (a setting, e.g. ``max_new_tokens``) inside an error message, for each face to word (see
    ``EsragError.worded``)."""
    return f"{_MARK}{name}{_MARK}"


class EsragError(Exception):
    """Base of every error esrag raises on purpose. ``exit_code`` is what the CLI exits with; ``http_status``
    and ``problem`` what the API answers (500 ``internal-error``: an error without a kind of its own)."""

    exit_code = 1
    http_status = 500
    problem = "internal-error"

    def __init__(self, *args: object, field: str | None = None) -> None:
        super().__init__(*args)
        self.field = field

    def worded(self, name: Callable[[str], str]) -> str:
        """The message with every ``setting(x)`` in it replaced by ``name(x)``."""
        return _REF.sub(lambda m: name(m.group(1)), super().__str__())

    def __str__(self) -> str:
        return self.worded(lambda name: name)


class ConfigError(EsragError, ValueError):
    """Bad configuration or arguments (exit code 2, like a usage error; 422 in the API, where the values come
    from the request). Also a ValueError: a bad value."""

    exit_code = 2
    http_status = 422
    problem = "invalid-request"


class MissingDependencyError(EsragError):
    """An optional dependency is not installed; the message names the extra to install."""

    problem = "missing-dependency"

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(f"{purpose} needs the '{package}' package (the esrag[{extra}] extra): run "
                         f"`pip install -e '.[{extra}]'` in your esrag checkout, or `pip install {package}`")
        self.package = package
        self.extra = extra


class PluginNotFoundError(ConfigError):
    """No store/generator/embedder registered under that name."""


class LoaderError(EsragError):
    """A file could not be read or parsed (a file the server reads: 500 in the API)."""

    problem = "load-failed"


class StoreError(EsragError):
    """A store operation failed (502: the store is the API's upstream)."""

    http_status = 502
    problem = "store-failed"


class StoreConnectionError(StoreError):
    """The store is unreachable (wrong URL, server down, TLS failure at connect time)."""

    problem = "store-unreachable"


class StoreTimeoutError(StoreConnectionError):
    """The store did not answer in time."""

    http_status = 504
    problem = "store-timeout"


class StoreForbiddenError(StoreConnectionError):
    """The store refused the credentials (HTTP 401) or their privileges (HTTP 403): with the caller's own
    Elasticsearch key (pass-through), the caller is refused."""

    http_status = 403
    problem = "store-forbidden"


class SourceError(EsragError):
    """An ingest source failed as a whole: its index is missing, it refuses the credentials, or it could not
    be read to the end (502: the source is an upstream). What was written before stays consistent."""

    http_status = 502
    problem = "source-failed"


class IndexNotFoundError(StoreError):
    """The index does not exist (run ``esrag ingest`` or ``esrag init`` first)."""

    http_status = 404
    problem = "index-not-found"


class ModelMismatchError(StoreError):
    """The index was built with another embedding model or dimension than the one configured."""

    http_status = 409
    problem = "model-mismatch"

    @classmethod
    def of(cls, where: str, built_model: str, built_dims: int, model: str, dims: int) -> ModelMismatchError:
        """The one message for every place that finds the mismatch (ingest, search, evaluation)."""
        return cls(f"index {where} was built with model {built_model!r} ({built_dims} dims), but the "
                   f"configured model is {model!r} ({dims} dims); set {setting('model')} to {built_model!r} or "
                   f"ingest into a new index ({setting('index')})")


class ReindexInProgressError(StoreError):
    """A write to an index that ``esrag reindex`` is rebuilding, or a second reindex of it: refused, so that
    nothing written meanwhile is missing from the rebuilt index."""

    http_status = 409
    problem = "reindex-in-progress"


class CorruptStoreError(StoreError):
    """The store file exists but is not a valid esrag store."""

    http_status = 500
    problem = "corrupt-store"


class BulkWriteError(StoreError):
    """Some chunks failed to write; ``errors`` holds one WriteError per failed chunk."""

    problem = "write-failed"

    def __init__(self, message: str, errors: tuple[object, ...]) -> None:
        super().__init__(message)
        self.errors = errors


class EmbeddingError(EsragError):
    """The embedding model could not be loaded or failed."""

    http_status = 502
    problem = "embedding-failed"


class EmbeddingTimeoutError(EmbeddingError):
    """The embedding server did not answer in time (or kept refusing with 429/503 past the retry budget)."""

    http_status = 504
    problem = "embedding-timeout"


class GeneratorError(EsragError):
    """The LLM could not be reached or failed. ``partial`` holds any answer text streamed before it did."""

    http_status = 502
    problem = "llm-failed"

    def __init__(self, message: str, partial: str = "") -> None:
        super().__init__(message)
        self.partial = partial


class GeneratorTimeoutError(GeneratorError):
    """The LLM server did not answer (or finish answering) in time."""

    http_status = 504
    problem = "llm-timeout"
