"""Two processes writing one embedded store: two `esrag ingest` runs at once end like one clean run, and
`esrag delete --all` during an ingest makes that ingest fail loudly instead of writing to a deleted file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _cli(store: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "esrag.cli", *args, "--store", "sqlite", "--sqlite-dir", str(store)]


def _corpus(root: Path, n: int) -> Path:
    root.mkdir()
    for i in range(n):
        body = " ".join(f"Paragraph {j} of note {i} is about topic {(i * j) % 17}." for j in range(40))
        (root / f"note{i:03}.md").write_text(f"# Note {i}\n\n{body}\n", encoding="utf-8")
    return root


def _state(store: Path) -> list[tuple[str, str]]:
    import sqlite3

    with sqlite3.connect(store / "esrag.db") as conn:
        return sorted(conn.execute("SELECT doc_id, chunk_sha FROM chunks").fetchall())


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "ESRAG_DEVICE": "cpu"}


def test_two_ingests_at_once_end_like_one_clean_run(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path / "docs", 12)
    clean = tmp_path / "clean"
    done = subprocess.run(_cli(clean, "ingest", str(corpus)), env=_env(), capture_output=True, text=True,
                          check=False, timeout=600)
    assert done.returncode == 0, done.stderr
    racing = tmp_path / "racing"
    procs = [subprocess.Popen(_cli(racing, "ingest", str(corpus), "--json"), env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert _state(racing) == _state(clean)


def test_delete_all_during_an_ingest_fails_that_ingest_loudly(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path / "docs", 150)
    store = tmp_path / "store"
    ingest = subprocess.Popen(_cli(store, "ingest", str(corpus), "--json", "--batch-size", "8"), env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and ingest.poll() is None:  # wait for the first committed chunks
        if (store / "esrag.db").exists():
            try:
                if _state(store):
                    break
            except Exception:  # noqa: S110 - the schema may not be there yet
                pass
        time.sleep(0.2)
    assert ingest.poll() is None, "the ingest finished before the delete could run"
    dropped = subprocess.run(_cli(store, "delete", "--all", "--yes"), env=_env(), capture_output=True, text=True,
                             check=False, timeout=120)
    assert dropped.returncode == 0, dropped.stderr
    out, err = ingest.communicate(timeout=600)
    assert ingest.returncode == 1, (out, err)
    assert "deleted or replaced by another process" in err + out
    report = json.loads(out) if out.strip().startswith("{") else {}
    assert report.get("aborted", True)
