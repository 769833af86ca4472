"""A small real index for the framework adapters' tests: twelve notes with metadata, ingested through the
engine with the deterministic ``hashed`` embedder (tests/plugins), into the store under test.

``RecordingEngine`` is a real engine that also records which thread ran each search, so a test can tell
that an async adapter searched off the event loop.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from esrag.config import Settings
from esrag.engine import Engine
from esrag.retrieval.search import SearchResult
from esrag.types import Document, Filters, Hit

TOPICS = [
    ("tls", "Rotating TLS certificates", "Rotate the TLS certificates every 90 days with certctl rotate; the "
     "load balancer reloads them without downtime.", "platform"),
    ("keys", "API keys", "API keys are rotated yearly. Revoke a leaked key at once with keyctl revoke.", "security"),
    ("backup", "Database backups", "Backups of the database run nightly at 02:00 and are kept for 30 days.", "data"),
    ("restore", "Restoring a backup", "Restore a database backup with dbctl restore and the snapshot id.", "data"),
    ("oncall", "On-call rotation", "The on-call rotation changes every Monday; page the secondary after 15 "
     "minutes.", "platform"),
    ("deploy", "Deploying", "Deploy with shipit deploy; a canary takes 5% of traffic for ten minutes.", "platform"),
    ("vpn", "VPN access", "Request VPN access in the portal; certificates for the VPN expire after a year.",
     "security"),
    ("logs", "Log retention", "Application logs are kept for 14 days, audit logs for a year.", "data"),
    ("dns", "DNS changes", "DNS changes go through a reviewed pull request to the zones repository.", "platform"),
    ("sso", "Single sign-on", "Single sign-on uses SAML; rotate the SAML signing certificate before it expires.",
     "security"),
    ("cache", "Cache warming", "Warm the cache after a deploy with cachectl warm to avoid a cold start.", "platform"),
    ("gdpr", "Data deletion", "Delete a customer's data within 30 days of the request, backups included.", "data"),
]

DOCS = [Document(doc_id=f"notes/{slug}.md", source=f"notes/{slug}.md", title=title, text=text,
                 metadata={"team": team, "year": 2022 + i % 3})
        for i, (slug, title, text, team) in enumerate(TOPICS)]

QUERY = "how do I rotate the certificates"


class RecordingEngine(Engine):
    """An engine that records the thread of each search (``threads``), then searches as usual."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.threads: list[int] = []

    def search(self, query: str, filters: Filters | None = None, **overrides: Any) -> SearchResult:
        self.threads.append(threading.get_ident())
        return super().search(query, filters, **overrides)


@contextmanager
def indexed_engine(settings: Settings) -> Iterator[RecordingEngine]:
    """An engine over a fresh index holding DOCS; the index is dropped afterwards."""
    engine = RecordingEngine(settings)
    report = engine.ingest_documents(DOCS)
    assert report.ok and report.documents == len(DOCS)
    try:
        yield engine
    finally:
        engine.drop()
        engine.close()


def hits(engine: Engine, query: str = QUERY, **options: Any) -> list[Hit]:
    """What ``Engine.search`` returns for the same query and options: what an adapter must return."""
    return engine.search(query, **options).hits
