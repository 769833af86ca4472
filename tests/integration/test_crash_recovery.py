"""A real SIGKILL in the middle of an ingest leaves a consistent store, and re-running finishes the job with
no duplicate or lost chunk. Run on both stores."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from esrag import plugins
from esrag.config import Settings
from esrag.types import ChunkRef

pytestmark = pytest.mark.integration

N_DOCS = 20


WORDS = ("river stone lamp orbit maple signal copper garden window thunder harbor pixel meadow engine "
         "violet canyon ledger falcon prism saddle").split()
# Small chunks, so each document has several and the two ingest windows take a few seconds each.
CHUNKING = ("--chunk-size", "32", "--chunk-overlap", "0")


def _write_corpus(root: Path, version: str) -> None:
    root.mkdir(exist_ok=True)
    for i in range(N_DOCS):
        paras = [f"Document {i} {version}, section {j}. " + " ".join(WORDS[(i + j + k) % len(WORDS)] for k in range(40))
                 for j in range(3)]
        (root / f"doc{i:02}.md").write_text("\n\n".join(paras))


def _cli(settings: Settings, *args: str) -> list[str]:
    cmd = [sys.executable, "-m", "esrag.cli", *args, "--index", settings.index, "--store", settings.store_name,
           "--batch-size", "8", "--no-progress", *CHUNKING]
    if settings.es_url:
        cmd += ["--es-url", settings.es_url]
    else:
        cmd += ["--sqlite-dir", settings.sqlite_dir]
    return cmd


def _refs(settings: Settings, root: Path) -> dict[str, list[ChunkRef]]:
    store = plugins.load(plugins.STORES, settings.store_name)(settings)
    try:
        if not store.exists():
            return {}
        return store.list_chunks([f"{root.name}/doc{i:02}.md" for i in range(N_DOCS)])
    finally:
        store.close()


def _complete_versions(refs: list[ChunkRef]) -> set[str]:
    """doc_sha values for which every chunk of that version is present exactly once."""
    by_version: dict[str, list[ChunkRef]] = {}
    for r in refs:
        by_version.setdefault(r.doc_sha, []).append(r)
    return {sha for sha, rs in by_version.items() if len(rs) == rs[0].chunk_count == len({r.id for r in rs})}


def _kill_mid_ingest(settings: Settings, root: Path, started: Callable[[dict[str, list[ChunkRef]]], bool]) -> None:
    """Start an ingest and SIGKILL it as soon as ``started(refs)`` says it has written something."""
    proc = subprocess.Popen(_cli(settings, "ingest", str(root)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if started(_refs(settings, root)) or proc.poll() is not None:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"ingest finished before it could be killed: {proc.stderr.read()!r}"  # type: ignore[union-attr]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture
def env() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"


def test_sigkill_mid_ingest_then_resume(tmp_path: Path, store_settings: Callable[..., Settings], env: None) -> None:
    settings = store_settings()
    root = tmp_path / "corpus"

    # 1. fresh ingest killed part-way: whatever is there is whole chunks, and the rerun completes it
    _write_corpus(root, "v1")
    _kill_mid_ingest(settings, root, lambda refs: bool(refs))
    partial = _refs(settings, root)
    assert 0 < sum(map(len, partial.values()))
    done = subprocess.run(_cli(settings, "ingest", str(root), "--json"), capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    v1 = _refs(settings, root)
    assert len(v1) == N_DOCS
    for refs in v1.values():
        assert len(_complete_versions(refs)) == 1 and len(refs) == refs[0].chunk_count

    # 2. every document edited, ingest killed part-way: each document still has a complete version
    _write_corpus(root, "v2")
    v1_shas = {doc_id: {r.doc_sha for r in refs} for doc_id, refs in v1.items()}
    _kill_mid_ingest(settings, root, lambda refs: any({r.doc_sha for r in rs} != v1_shas[d] for d, rs in refs.items()))
    for doc_id, refs in _refs(settings, root).items():
        assert _complete_versions(refs), f"{doc_id} lost its chunks"

    # 3. the rerun leaves exactly the new version of every document, nothing duplicated, nothing lost
    done = subprocess.run(_cli(settings, "ingest", str(root), "--json"), capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    v2 = _refs(settings, root)
    assert len(v2) == N_DOCS
    for doc_id, refs in v2.items():
        versions = _complete_versions(refs)
        assert len(versions) == 1 and len(refs) == refs[0].chunk_count, doc_id
        assert versions != _complete_versions(v1[doc_id])
    again = subprocess.run(_cli(settings, "ingest", str(root), "--json"), capture_output=True, text=True, check=False)
    assert f'"documents_unchanged": {N_DOCS}' in again.stdout
