"""Every extension point of esrag, and one registry over them: Python entry points.

Built-ins register exactly as third-party packages do, in their ``pyproject.toml``::

    [project.entry-points."esrag.embedders"]
    my_embedder = "my_package.embedder:MyEmbedder"

- ``esrag.stores``: a callable ``(settings) -> Store`` (``esrag.stores.base.Store``);
- ``esrag.embedders``: ``(settings) -> Embedder`` (``esrag.embedders.base.Embedder``);
- ``esrag.generators``: ``(settings) -> Generator`` (``esrag.generators.base.Generator``);
- ``esrag.sources``: ``(settings, **options) -> Source`` (``esrag.sources.base.Source``): where an ingest's
  documents come from (built-ins: ``files``, ``elasticsearch``); ``options`` are the source's own
  arguments (paths, an index name...), its settings a ``[source.NAME]`` table.

Nothing is imported until a plugin is asked for by name (``esrag --help`` and ``esrag plugins`` import no
plugin). A plugin with settings of its own declares a pydantic model and reads them with
``plugin_settings``, from a ``[embedder.NAME]`` table in esrag.toml and ``ESRAG_EMBEDDER_NAME_KEY``
variables; an unknown key is an error that names it.
"""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from esrag.errors import ConfigError, PluginNotFoundError

if TYPE_CHECKING:
    from esrag.config import Settings

STORES = "esrag.stores"
EMBEDDERS = "esrag.embedders"
GENERATORS = "esrag.generators"
SOURCES = "esrag.sources"
#: group -> the singular kind used in messages, settings tables and ``esrag plugins`` output keys
GROUPS = {STORES: "store", EMBEDDERS: "embedder", GENERATORS: "generator", SOURCES: "source"}

M = TypeVar("M", bound=BaseModel)


_SCANNED: dict[tuple[str, tuple[str, ...]], list[EntryPoint]] = {}


def _entry_points(group: str) -> list[EntryPoint]:
    """The group's entry points, sorted by name. Scanning the installed distributions takes milliseconds,
    and the API checks plugin names on every request, so each scan is kept for as long as ``sys.path`` is
    the same (a distribution put on the path later, as tests and plugin hosts do, is found)."""
    key = (group, tuple(sys.path))
    found = _SCANNED.get(key)
    if found is None:
        found = _SCANNED[key] = sorted(entry_points(group=group), key=lambda ep: ep.name)
    return found


def available(group: str) -> list[str]:
    """Names registered in an entry-point group, sorted."""
    return sorted({ep.name for ep in _entry_points(group)})


def load(group: str, name: str) -> Any:
    """Import and return the object registered as ``name`` in ``group``; PluginNotFoundError (a usage error,
    exit 2) naming the installed ones if there is none."""
    for ep in _entry_points(group):
        if ep.name == name:
            return ep.load()
    kind = GROUPS.get(group, group.rsplit(".", 1)[-1].rstrip("s"))
    names = ", ".join(available(group)) or "none (is esrag installed with pip?)"
    raise PluginNotFoundError(f"no {kind} named {name!r}; installed: {names}")


def check(group: str, name: str, flag: str, field: str | None = None) -> None:
    """Fail early, before anything loads, when ``name`` is not registered in ``group`` (named by ``flag``:
    where the name came from; ``field``: the setting or request field at fault, if one is)."""
    if name not in available(group):
        kind = GROUPS[group]
        names = ", ".join(available(group)) or "none"
        raise PluginNotFoundError(f"{flag}: no {kind} named {name!r}; installed: {names}", field=field)


def listing() -> dict[str, list[dict[str, str | None]]]:
    """Every registered plugin by group, with the distribution and version that provides it (``esrag
    plugins --json``): ``{"stores": [{"name", "package", "version"}], "embedders": [...], ...}``."""
    out: dict[str, list[dict[str, str | None]]] = {}
    for group in GROUPS:
        rows = []
        for ep in _entry_points(group):
            dist = ep.dist
            rows.append({"name": ep.name, "package": dist.name if dist else None,
                         "version": dist.version if dist else None, "object": ep.value})
        out[group.rsplit(".", 1)[-1]] = rows
    return out


def plugin_settings(settings: Settings, group: str, name: str, model: type[M]) -> M:
    """A plugin's own settings, validated by its pydantic ``model``: the ``[<kind>.<name>]`` table of
    esrag.toml, overridden by ``ESRAG_<KIND>_<NAME>_<KEY>`` variables. Unknown keys and bad values raise
    ConfigError naming the key and the source."""
    kind = GROUPS[group]
    values: dict[str, Any] = dict(settings.plugin_options.get(f"{kind}.{name}", {}))
    prefix = f"{name.lower()}_"
    for rest, raw in settings.plugin_options.get(f"{kind}:env", {}).items():
        if rest.startswith(prefix):
            values[rest[len(prefix):]] = raw
    unknown = sorted(set(values) - set(model.model_fields))
    if unknown:
        known = ", ".join(model.model_fields) or "none"
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)} for {kind} {name!r} ([{kind}.{name}] in "
                          f"esrag.toml or ESRAG_{kind.upper()}_{name.upper()}_*); known: {known}")
    try:
        return model.model_validate(values)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(x) for x in err["loc"])
        raise ConfigError(f"{kind} {name!r} setting {key}: {err['msg']} ([{kind}.{name}] in esrag.toml or "
                          f"ESRAG_{kind.upper()}_{name.upper()}_{key.upper()})") from None
