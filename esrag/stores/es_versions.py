"""The versions of an Elasticsearch index: concrete indices ``<alias>-vN`` behind the alias users query.

- Names: ``version_of`` reads N from a concrete index name as an integer, so ``-v10`` sorts after ``-v9``.
- State: a version being built records ``"esrag_build": "building"`` in its mapping ``_meta`` (next to the
  IndexMeta, which ignores the key); ``promote`` sets it to ``"complete"`` before it moves the alias. An
  index named like a version without esrag ``_meta`` (made by a write that reached a version deleted under
  it) counts as building: the next reindex deletes it, a rollback never picks it.
- The swap is one ``POST _aliases`` with a ``remove`` of every index the alias points at and an ``add`` of
  the new one: Elasticsearch applies the actions atomically, so a search sees the old or the new version,
  never none and never both.
- The freeze is ``index.blocks.write`` on the live version plus an ``esrag_reindex`` note in its ``_meta``
  (who, since when, which version is being built): writes through the alias fail with a cluster block,
  which ``ElasticsearchStore.write`` reports as ReindexInProgressError, and searches go on. A second
  reindex finds the note and is refused.

Request bodies are built by the pure functions at the top (tested exactly); ``EsVersions`` runs them.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from esrag.errors import ConfigError, ReindexInProgressError, StoreError
from esrag.stores.base import IndexVersion
from esrag.stores.sqlite_files import holder_alive

if TYPE_CHECKING:
    from esrag.config import Settings
    from esrag.stores.elasticsearch import ElasticsearchStore

#: ``_meta`` key of a version's build state, and of the note on a frozen live version
BUILD_KEY = "esrag_build"
NOTE_KEY = "esrag_reindex"
BUILDING = "building"
COMPLETE = "complete"


def version_name(alias: str, number: int) -> str:
    """``<alias>-v<number>``."""
    return f"{alias}-v{number}"


def version_of(alias: str, name: str) -> int | None:
    """N of a concrete index named ``<alias>-vN`` (N a positive decimal integer without a sign or leading
    zero), else None: ``version_of("a", "a-v10") == 10``, ``version_of("a", "a-b-v1") is None``."""
    m = re.fullmatch(re.escape(alias) + r"-v([1-9][0-9]{0,8})", name)
    return int(m.group(1)) if m else None


def swap_actions(alias: str, current: list[str], new: str) -> list[dict[str, Any]]:
    """The ``_aliases`` actions that point ``alias`` at ``new`` alone, in one atomic request."""
    actions: list[dict[str, Any]] = [{"remove": {"index": name, "alias": alias}} for name in sorted(current)
                                     if name != new]
    actions.append({"add": {"index": new, "alias": alias}})
    return actions


def freeze_note(target: str) -> dict[str, Any]:
    """What a frozen live version records: the version being built, by whom, since when (epoch seconds)."""
    return {"target": target, "host": socket.gethostname(), "pid": os.getpid(), "since": int(time.time())}


class EsVersions:
    """``IndexVersions`` over one ElasticsearchStore (see the module docstring)."""

    def __init__(self, store: ElasticsearchStore) -> None:
        self.store = store
        self.alias = store.alias

    # -- reading --------------------------------------------------------------------------------------

    def _definitions(self) -> dict[str, Any]:
        """``GET <alias>-v*``: every versioned concrete index -> its definition."""
        client = self.store.client
        with self.store._api("listing the index versions"):
            resp = client.options(ignore_status=404).indices.get(index=f"{self.alias}-v*",
                                                                 expand_wildcards="open,closed")
        return dict(resp.body) if resp.meta.status == 200 else {}

    def _live_names(self) -> list[str]:
        with self.store._api("resolving the index alias"):
            resp = self.store.client.options(ignore_status=404).indices.get_alias(name=self.alias)
        return sorted(resp.body) if resp.meta.status == 200 and isinstance(resp.body, dict) else []

    def listing(self) -> list[IndexVersion]:
        live = set(self._live_names())
        out = []
        for name, definition in self._definitions().items():
            number = version_of(self.alias, name)
            if number is None:
                continue
            meta = (definition.get("mappings") or {}).get("_meta") or {}
            # no esrag _meta: made by a write that reached a version deleted under it (a guessed mapping)
            state = str(meta.get(BUILD_KEY, COMPLETE)) if "model" in meta else BUILDING
            out.append(IndexVersion(number=number, name=name, live=name in live, state=state))
        return sorted(out, key=lambda v: v.number)

    def token(self, fresh: bool = False) -> str | None:
        if fresh:
            self.store.read_meta()
        return self.store.served_index()

    def open(self, number: int, settings: Settings) -> ElasticsearchStore:
        from esrag.stores.elasticsearch import ElasticsearchStore

        return ElasticsearchStore.bound(settings.replace(index=self.alias), version_name(self.alias, number))

    # -- freezing -------------------------------------------------------------------------------------

    def _meta_of(self, name: str) -> dict[str, Any]:
        with self.store._api(f"reading the mapping of '{name}'"):
            resp = self.store.client.indices.get_mapping(index=name)
        return dict(((resp.body.get(name) or {}).get("mappings") or {}).get("_meta") or {})

    def _put_meta(self, name: str, meta: dict[str, Any]) -> None:
        with self.store._api(f"recording the _meta of '{name}'"):
            self.store.client.indices.put_mapping(index=name, meta=meta)

    def _block(self, name: str, on: bool) -> None:
        with self.store._api(f"{'blocking' if on else 'unblocking'} writes to '{name}'"):
            self.store.client.indices.put_settings(index=name, settings={"index.blocks.write": on})

    @contextmanager
    def freeze(self, purpose: str) -> Iterator[None]:
        live = self._live_names()
        if len(live) != 1:
            raise StoreError(f"alias '{self.alias}' at {self.store.location} points at {len(live)} indices "
                             f"({', '.join(live) or 'none'}); a reindex needs exactly one live version")
        name = live[0]
        meta = self._meta_of(name)
        note = meta.get(NOTE_KEY)
        if note:
            raise ReindexInProgressError(
                f"index '{self.alias}' at {self.store.location} is already being rebuilt (into "
                f"{note.get('target')!r} by pid {note.get('pid')} on {note.get('host')}); if that reindex "
                f"died, run `esrag reindex --abort` first")
        self._block(name, True)
        self._put_meta(name, {**meta, NOTE_KEY: freeze_note(purpose)})
        try:
            with self.store._api("refreshing the index"):
                self.store.client.indices.refresh(index=name)  # writes accepted before the block are read
            yield
        finally:
            self._thaw(name)

    def _thaw(self, name: str) -> None:
        # null rather than absent: Elasticsearch replaces _meta, some compatible servers merge it
        self._put_meta(name, {**self._meta_of(name), NOTE_KEY: None})
        self._block(name, False)

    # -- changing -------------------------------------------------------------------------------------

    def promote(self, number: int) -> None:
        name = version_name(self.alias, number)
        meta = self._meta_of(name)
        self._put_meta(name, {**meta, BUILD_KEY: COMPLETE})
        current = self._live_names()
        with self.store._api(f"moving alias '{self.alias}' to '{name}'"):
            self.store.client.indices.update_aliases(actions=swap_actions(self.alias, current, name))
        self.store.forget_alias()

    def _cancel_copies(self) -> list[str]:
        """Cancel the server-side copies (``es_copy``) a killed reindex left running into a version that is
        not live; what was done. A server that keeps no task list answers none."""
        from esrag.stores.es_copy import copies_into

        live = set(self._live_names())
        client = self.store.client.options(ignore_status=(400, 404))
        with self.store._api("listing the copies under way"):
            resp = client.perform_request("GET", "/_tasks?actions=*reindex&detailed=true",
                                          headers={"accept": "application/json"})
        running = dict(resp.body) if resp.meta.status == 200 and isinstance(resp.body, dict) else {}
        done = []
        for task in copies_into(running, lambda name: version_of(self.alias, name) is not None and name not in live):
            with self.store._api(f"cancelling the copy {task}"):
                client.perform_request("POST", f"/_tasks/{quote(task, safe=':')}/_cancel",
                                       headers={"accept": "application/json"})
            done.append(f"cancelled the copy {task} a killed reindex left running")
        return done

    def delete(self, number: int) -> None:
        name = version_name(self.alias, number)
        if name in self._live_names():
            raise ConfigError(f"'{name}' is the live version of '{self.alias}' at {self.store.location}: "
                              f"it cannot be deleted (roll back or reindex first)")
        with self.store._api(f"deleting '{name}'"):
            self.store.client.options(ignore_status=404).indices.delete(index=name)

    def cleanup(self, force: bool = False) -> list[str]:
        for name in self._live_names():
            note = self._meta_of(name).get(NOTE_KEY)
            if note and holder_alive(note) and not force:
                raise ReindexInProgressError(
                    f"index '{self.alias}' at {self.store.location} is being rebuilt (into {note.get('target')!r} "
                    f"by pid {note.get('pid')} on {note.get('host')}); if that reindex died, run "
                    f"`esrag reindex --abort`")
        done = self._cancel_copies()
        for v in self.listing():
            if v.state == BUILDING and not v.live:
                self.delete(v.number)
                done.append(f"deleted the half-built version {v.name}")
        for name in self._live_names():
            if self._meta_of(name).get(NOTE_KEY):
                self._thaw(name)
                done.append(f"released the write block a reindex left on {name}")
        return done
