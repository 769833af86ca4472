"""docs/python.md runs as written: its Python blocks, in order, in an empty directory, with the packaged
model and the embedded store, print what the page says they print."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

PAGE = Path(__file__).resolve().parents[2] / "docs" / "python.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def test_the_python_page_runs_as_written_and_prints_what_it_says(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HAYSTACK_TELEMETRY_ENABLED", "False")
    blocks = python_blocks(PAGE.read_text(encoding="utf-8"))
    assert len(blocks) >= 10
    namespace: dict[str, Any] = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{PAGE.name}, block {i + 1}", "exec"), namespace)  # noqa: S102 - our own docs
    lines = capsys.readouterr().out.splitlines()

    assert lines[0] == "sqlite False"
    assert "True 3 3" in lines and "1 []" in lines  # documents from memory, then a directory of files
    assert (tmp_path / ".esrag" / "handbook.db").is_file() and not (tmp_path / ".esrag" / "no-such-index.db").exists()
    assert namespace["result"].hits[0].doc_id == "runbooks/tls"
    assert sorted(h.doc_id for h in namespace["platform"].hits) == ["notes/oncall.md", "runbooks/tls"]
    assert "runbooks/keys 2" in lines
    assert namespace["explained"]["request"]["store"] == "sqlite"
    answer = namespace["answer"]
    assert [c.doc_id for c in answer.citations] == ["runbooks/tls"] and "90 days" in answer.text
    assert "[1] runbooks/tls.md: Rotating TLS certificates" in lines and "True False" in lines
    assert any(line.startswith("index 'no-such-index' not found (sqlite: ") for line in lines)
    assert "alpha alpha must be between 0 and 1, got 1.5" in lines
    # the adapters return the engine's hits, in its order
    assert [d.metadata["doc_id"] for d in namespace["docs"]] == ["runbooks/tls", "notes/oncall.md"]
    assert [n.node.metadata["doc_id"] for n in namespace["nodes"]] == ["runbooks/keys"]
    assert namespace["out"]["prompt"]["prompt"] == (
        "[1] Database backups run nightly at 02:00 and are kept for 30 days.\nQuestion: When do backups run?")
