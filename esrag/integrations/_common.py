"""What the framework adapters share: the missing-extra error, filters in, options checked, hits out.

Nothing here imports a framework. Filters given to an adapter are normalised to esrag's ``Filters``
(``{key: (value, ...)}``, values as the strings the stores compare: ``True`` is ``"true"``, ``3`` is
``"3"``); frameworks' own filter languages are translated to that by their adapter, through
``Conjunction``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from esrag.config import FUSIONS, MODES, NORMALIZATIONS, check_alpha, check_doc_weight
from esrag.errors import ConfigError, MissingDependencyError

if TYPE_CHECKING:
    from esrag.engine import Engine
    from esrag.types import Filters, Hit

FilterValue = str | int | float | bool
#: what adapters accept as filters: a key's value, or a list of values any of which may match
FilterInput = Mapping[str, FilterValue | Sequence[FilterValue]]

#: the search options an adapter passes through to ``Engine.search`` (None: the engine's setting)
SEARCH_OPTIONS = ("mode", "alpha", "fusion", "normalization", "doc_weight", "candidates", "rrf_k")

#: the metadata keys esrag adds to each document besides the hit's own metadata (they win over a metadata
#: key of the same name); ``POSITION_KEYS`` say where the text is, the rest how it scored
POSITION_KEYS = ("chunk_id", "doc_id", "source", "title", "chunk_index")
SCORE_KEYS = ("score", "bm25_score", "dense_score", "bm25_rank", "dense_rank", "bm25_norm", "dense_norm")


def missing_extra(package: str, extra: str, module: str) -> MissingDependencyError:
    """The error for an adapter module imported without its framework: it names the extra to install."""
    return MissingDependencyError(package, extra, f"{module} (esrag's {extra} adapter)")


def filter_value(value: object, key: str) -> str:
    """One filter value as the stores compare it: strings as they are, booleans as JSON (``true``), numbers
    as their text; ConfigError naming the key for anything else (None, a dict...)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    raise ConfigError(f"filters.{key}: expected a string, number or boolean, or a list of them; got "
                      f"{type(value).__name__}", field="filters")


def to_filters(filters: FilterInput | None) -> dict[str, tuple[str, ...]]:
    """esrag's Filters from ``{key: value}`` or ``{key: [value, ...]}`` (None: no filter). Keys are ANDed, a
    key's values ORed; an empty list matches nothing. Keys ``doc_id``, ``source`` and ``title`` address
    those fields, any other key the document's metadata."""
    if filters is None:
        return {}
    if not isinstance(filters, Mapping):
        raise ConfigError(f"filters: expected a mapping of key to value(s), got {type(filters).__name__}",
                          field="filters")
    out: dict[str, tuple[str, ...]] = {}
    for key, value in filters.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"filters: a key must be a non-empty string, got {key!r}", field="filters")
        if isinstance(value, str | bytes) or not isinstance(value, Sequence | set | frozenset):
            out[key] = (filter_value(value, key),)
        else:
            out[key] = tuple(filter_value(v, key) for v in value)
    return out


class Conjunction:
    """An AND of equality conditions, built one condition at a time, as esrag Filters: a key given twice
    keeps only the values both allow (``team == a AND team in [a, b]`` is ``team: (a,)``; ``team == a AND
    team == b`` matches nothing)."""

    def __init__(self) -> None:
        self.filters: dict[str, tuple[str, ...]] = {}

    def add(self, key: str, values: Sequence[object]) -> None:
        allowed = tuple(dict.fromkeys(filter_value(v, key) for v in values))
        if key in self.filters:
            allowed = tuple(v for v in self.filters[key] if v in allowed)
        self.filters[key] = allowed


def check_options(k: int | None, options: Mapping[str, Any]) -> None:
    """ConfigError, naming the option, for a value ``Engine.search`` would refuse or misread: k below 0, an
    unknown mode, fusion or normalisation, alpha or doc_weight outside [0, 1], candidates or rrf_k below 1.
    None means the engine's setting and is always fine."""
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 0):
        raise ConfigError(f"k must be an integer of at least 0, got {k!r}", field="k")
    for name, allowed in (("mode", MODES), ("fusion", FUSIONS), ("normalization", NORMALIZATIONS)):
        value = options.get(name)
        if value is not None and value not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}", field=name)
    if options.get("alpha") is not None:
        check_alpha(float(options["alpha"]))
    if options.get("doc_weight") is not None:
        check_doc_weight(float(options["doc_weight"]))
    for name in ("candidates", "rrf_k"):
        value = options.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ConfigError(f"{name} must be an integer of at least 1, got {value!r}", field=name)
    unknown = sorted(set(options) - set(SEARCH_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown search option(s) {', '.join(unknown)}; known: {', '.join(SEARCH_OPTIONS)}",
                          field=unknown[0])


def search(engine: Engine, query: str, k: int | None, filters: Filters, options: Mapping[str, Any]) -> list[Hit]:
    """``engine.search``'s hits, best first: at most ``k`` (None: the engine's ``k`` setting; 0: none, and
    nothing is searched), with the options that are not None. Errors are the engine's (ConfigError for an
    empty query, IndexNotFoundError...)."""
    check_options(k, options)
    if k == 0:
        return []
    overrides = {name: value for name, value in options.items() if value is not None}
    return engine.search(query, filters=filters or None, k=k, **overrides).hits


def hit_metadata(hit: Hit) -> dict[str, Any]:
    """A hit's metadata for a framework's document: its own metadata, then ``POSITION_KEYS`` and
    ``SCORE_KEYS`` (which win over a metadata key of the same name)."""
    meta: dict[str, Any] = dict(hit.metadata)
    meta.update(chunk_id=hit.id, doc_id=hit.doc_id, source=hit.source, title=hit.title,
                chunk_index=hit.chunk_index, score=hit.score, bm25_score=hit.bm25_score,
                dense_score=hit.dense_score, bm25_rank=hit.bm25_rank, dense_rank=hit.dense_rank,
                bm25_norm=hit.bm25_norm, dense_norm=hit.dense_norm)
    return meta
