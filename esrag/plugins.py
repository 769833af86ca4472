"""The extension points: stores, generators and embedders, found through entry points.

Built-ins are registered the same way as third-party plugins, in esrag's own ``pyproject.toml``::

    [project.entry-points."esrag.stores"]
    mystore = "my_package.store:MyStore"

A store entry point is a callable ``(settings: Settings) -> Store``; a generator entry point is a callable
``(settings: Settings) -> Generator``. Nothing is imported until a plugin is asked for by name.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from esrag.errors import PluginNotFoundError

STORES = "esrag.stores"
GENERATORS = "esrag.generators"
EMBEDDERS = "esrag.embedders"


def available(group: str) -> list[str]:
    """Names registered in an entry-point group, sorted."""
    return sorted({ep.name for ep in entry_points(group=group)})


def load(group: str, name: str) -> Any:
    """Import and return the object registered as ``name`` in ``group``."""
    for ep in entry_points(group=group):
        if ep.name == name:
            return ep.load()
    kind = group.rsplit(".", 1)[-1].rstrip("s")
    names = ", ".join(available(group)) or "none (is esrag installed with pip?)"
    raise PluginNotFoundError(f"no {kind} named {name!r}; available: {names}")
