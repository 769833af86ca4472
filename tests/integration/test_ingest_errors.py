"""Per-file failures that the operating system and the tokenizer produce themselves, not simulated: an
unreadable file and directory (a real EACCES; as root, the CLI runs without the capabilities that let root
read anything), and text the Rust tokenizer refuses. Each becomes a skipped entry and the run goes
on, with exit code 0."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from esrag.ingest.pipeline import Ingestor
from esrag.sources.documents import DocumentsSource
from esrag.stores.base import Store
from esrag.types import Document

pytestmark = pytest.mark.integration

MakeStore = Callable[..., Store]


def _without_root_overrides() -> list[str]:
    """A command prefix under which file permissions apply: none for a normal user; for root, ``setpriv``
    dropping the capabilities that let root read and search anything (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("running as root, this test needs setpriv (util-linux) to make file permissions apply")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--"]


def test_unreadable_files_and_directories_are_skipped_with_the_os_reason(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "good.md").write_text("# Good\n\nThe lighthouse keeper counts ships at dawn.")
    (root / "locked.md").write_text("nobody may read this")
    (root / "locked.md").chmod(0o000)
    (root / "private").mkdir()
    (root / "private" / "inside.md").write_text("behind a locked directory")
    (root / "private").chmod(0o000)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    try:
        done = subprocess.run(
            [*_without_root_overrides(), sys.executable, "-m", "esrag.cli", "ingest", str(root), "--sqlite-dir",
             str(tmp_path / "store"), "--json", "--no-progress", "--device", "cpu"],
            env=env, capture_output=True, text=True, timeout=300, check=False)
    finally:
        (root / "private").chmod(0o755)
        (root / "locked.md").chmod(0o644)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    reasons = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert reasons == {"locked.md": "cannot read: Permission denied",
                       "private": "cannot read directory: Permission denied"}, reasons
    assert report["documents_new"] == 1 and report["chunks_written"] == 1


def test_text_the_tokenizer_refuses_is_a_skipped_document(make_store: MakeStore, embedder: Any) -> None:
    """Documents sent as data (the API, ES sources) are not cleaned like files: a lone surrogate reaches the
    Rust tokenizer, which cannot encode it. That document is skipped, named; the others are written."""
    store = make_store()
    docs = [Document("ok", "api", "A well-formed note about orchards."),
            Document("bad", "api:bad", "A note with a lone surrogate \ud800 inside.")]
    report = Ingestor(store, embedder, store.settings).ingest(DocumentsSource(docs))  # type: ignore[attr-defined]
    assert report.ok and report.exit_code == 0
    assert [(s.path, s.reason.split(":")[0]) for s in report.skipped] == [("api:bad", "cannot chunk")]
    assert set(store.list_documents()) == {"ok"}
