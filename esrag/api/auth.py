"""API keys: who may call the API, and whether they may write.

Keys come from ``ESRAG_API_KEYS`` (comma-separated) and/or a key file (``--api-key-file``, one key a line,
``#`` comments). Each entry is ``KEY`` or ``ro:KEY`` for a read-only key (search, ask, chat, status) or
``rw:KEY`` for a read-write key (documents too). Any other prefix (``RW:``, ``admin:``) is an error, not a
key: a key never contains ``:``. Clients send ``Authorization: Bearer KEY``, as OpenAI
clients send theirs. Keys are compared in constant time, and only their SHA-256 digests are kept; no key is
logged or echoed.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from esrag.errors import ConfigError

KEYS_ENV = "ESRAG_API_KEYS"
KEY_FILE_ENV = "ESRAG_API_KEY_FILE"
MIN_KEY_LENGTH = 16


class Scope(Enum):
    READ = "read"
    WRITE = "write"


@dataclass(frozen=True)
class ApiKeys:
    """The accepted keys, as digests with their scope. Empty: no authentication (loopback or --no-auth)."""

    digests: tuple[tuple[bytes, Scope], ...] = ()
    #: the plain keys, kept only to scrub them from messages; never serialised
    secrets: frozenset[str] = frozenset()

    @property
    def enabled(self) -> bool:
        return bool(self.digests)

    def scope_of(self, key: str) -> Scope | None:
        """The scope of ``key``, None when it is not accepted. Compares with every key, in constant time."""
        digest = hashlib.sha256(key.encode("utf-8")).digest()
        found: Scope | None = None
        for known, scope in self.digests:
            if hmac.compare_digest(digest, known) and found is None:
                found = scope
        return found

    @classmethod
    def parse(cls, entries: Iterable[tuple[str, str]]) -> ApiKeys:
        """Keys from ``(entry, where)`` pairs; ``where`` names the variable or file line for errors."""
        digests: list[tuple[bytes, Scope]] = []
        secrets: set[str] = set()
        for entry, where in entries:
            scope, key = Scope.READ, entry
            prefix, sep, rest = entry.partition(":")
            if sep:
                if prefix not in ("ro", "rw"):
                    raise ConfigError(f"{where}: {_unknown_prefix(prefix)}")
                scope, key = (Scope.WRITE if prefix == "rw" else Scope.READ), rest
            if ":" in key:
                raise ConfigError(f"{where}: an API key may not contain ':' (one prefix, ro: or rw:, then the key)")
            if len(key) < MIN_KEY_LENGTH:
                raise ConfigError(f"{where}: an API key must be at least {MIN_KEY_LENGTH} characters "
                                  "(generate one with `python -c 'import secrets; print(secrets.token_urlsafe())'`)")
            if any(c.isspace() or c == "," for c in key):
                raise ConfigError(f"{where}: an API key may not contain spaces or commas")
            digests.append((hashlib.sha256(key.encode("utf-8")).digest(), scope))
            secrets.add(key)
        return cls(tuple(digests), frozenset(secrets))


def _unknown_prefix(prefix: str) -> str:
    """The message for an entry whose prefix is not ro or rw; it names the prefix only when that is a
    miswritten ro/rw (anything else might be part of a key)."""
    if prefix.lower() in ("ro", "rw"):
        return f"unknown key prefix '{prefix}:': write it in lower case, {prefix.lower()}:KEY"
    return "an entry has an unknown prefix before ':' (the prefixes are ro: and rw:; a key may not contain ':')"


def load_keys(env: Mapping[str, str] | None = None, key_file: str | Path | None = None) -> ApiKeys:
    """The keys of ``ESRAG_API_KEYS`` and of the key file (``key_file``, else ``ESRAG_API_KEY_FILE``)."""
    env = os.environ if env is None else env
    entries: list[tuple[str, str]] = []
    raw = env.get(KEYS_ENV, "")
    entries += [(e.strip(), KEYS_ENV) for e in raw.split(",") if e.strip()]
    path = key_file or env.get(KEY_FILE_ENV)
    if path:
        p = Path(path).expanduser()
        try:
            lines = p.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise ConfigError(f"cannot read the API key file {p}: {e.strerror}") from e
        for number, line in enumerate(lines, 1):
            line = line.split("#", 1)[0].strip()
            if line:
                entries.append((line, f"{p}:{number}"))
        if not any(where.startswith(f"{p}:") for _, where in entries):
            raise ConfigError(f"the API key file {p} holds no key")
    return ApiKeys.parse(entries)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header; None when absent or another scheme."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def is_loopback(host: str) -> bool:
    import ipaddress

    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
