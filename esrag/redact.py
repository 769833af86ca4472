"""Keeping secrets out of messages: URL credentials found by parsing, configured secrets masked in text.

``split_credentials`` finds the ``user:password@`` part of a URL by locating the host, not by a pattern over
the whole string, so a password that contains ``#``, ``/``, ``?``, ``@`` or ``:`` (which ``urllib.parse``
would read as a fragment, path, query or port) is still recognised, removed and returned decoded. Every URL
that esrag prints goes through ``redact_url``; ``mask_secrets`` is the last line of defence for free text
(an exception message from a library that echoes a header, say).

Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple
from urllib.parse import quote, unquote

#: What replaces a secret in text.
MASK = "***"
#: A host (name, IPv4 or bracketed IPv6) and optional port, followed by the end of the URL or a path,
#: query or fragment: what must follow the ``@`` that ends the userinfo.
_HOSTPORT = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-~%]+)(?::[0-9]*)?(?=[/?#]|$)")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
#: In free text a URL runs to the next white space, and its host may be followed by punctuation: "(at x@h)".
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://\S+")
_HOSTPORT_IN_TEXT = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-~%]+)(?::[0-9]*)?(?![A-Za-z0-9_.\-~%:@])")
#: Secrets shorter than this are not masked in free text (masking "a" would garble every message).
MIN_MASKED_LENGTH = 4


class UrlParts(NamedTuple):
    """A URL with its credentials taken out: ``url`` has no userinfo; ``username``/``password`` are
    percent-decoded, None when absent."""

    url: str
    username: str | None
    password: str | None


def split_credentials(url: str) -> UrlParts:
    """Take the ``user[:password]@`` part out of ``url``.

    The userinfo ends at the last ``@`` (after ``scheme://``) that is followed by a valid ``host[:port]``
    and then the end of the URL or ``/``, ``?`` or ``#``; so ``http://elastic:pa#ss@host:9200`` yields
    ``("http://host:9200", "elastic", "pa#ss")``. The username ends at the first ``:``. A URL without a
    scheme or without credentials comes back unchanged. When in doubt (an ``@`` in a path), more is
    treated as userinfo, never less: the error is on the side of hiding.
    """
    m = _SCHEME.match(url)
    if m is None:
        return UrlParts(url, None, None)
    head, rest = url[: m.end()], url[m.end() :]
    at = _userinfo_end(rest, _HOSTPORT)
    if at < 0:
        return UrlParts(url, None, None)
    userinfo, tail = rest[:at], rest[at + 1 :]
    user, sep, password = userinfo.partition(":")
    return UrlParts(head + tail, unquote(user), unquote(password) if sep else None)


def _userinfo_end(rest: str, host: re.Pattern[str]) -> int:
    """Index in ``rest`` (a URL after ``scheme://``) of the ``@`` that ends the userinfo: the last one that
    ``host`` matches after; -1 when there is none."""
    at = len(rest)
    while True:
        at = rest.rfind("@", 0, at)
        if at < 0 or host.match(rest, at + 1):
            return at


def redact_url(url: str) -> str:
    """``url`` without any credentials (see ``split_credentials``), for messages and ``status``."""
    return split_credentials(url).url


def secret_forms(secret: str) -> set[str]:
    """The ways a secret can appear in text: as is and percent-encoded (as inside a URL)."""
    return {secret, quote(secret, safe=""), quote(secret)}


def mask_secrets(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every occurrence of each secret (and its percent-encoded forms) replaced by
    ``MASK``. None, empty and very short secrets (under ``MIN_MASKED_LENGTH`` characters) are ignored;
    longer forms are replaced first so that one secret containing another is masked whole."""
    forms: set[str] = set()
    for s in secrets:
        if s and len(s) >= MIN_MASKED_LENGTH:
            forms |= secret_forms(s)
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, MASK)
    return text


def redact_text(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Free text (an error message, a log line) with the userinfo of every URL in it replaced by ``MASK``
    (``https://user:pa/ss@host`` -> ``https://***@host``, found by the same rule as ``split_credentials``)
    and every one of ``secrets`` masked (``mask_secrets``)."""

    def one(m: re.Match[str]) -> str:
        url = m.group(0)
        start = url.index("://") + 3
        at = _userinfo_end(url[start:], _HOSTPORT_IN_TEXT)
        return url if at < 0 else url[:start] + MASK + url[start + at:]

    return mask_secrets(_URL_IN_TEXT.sub(one, text), secrets)
