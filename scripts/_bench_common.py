"""Helpers shared by the benchmark scripts (not part of the package)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: python-faq, built on first use by scripts/build_python_faq.py (from Debian's python3.11-doc)
DEFAULT_DATA = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "esrag" / "sets" / "python-faq"


def dataset(path: Path) -> Path:
    """``path``; the default python-faq is built there first when it is missing (needs `apt-get update`
    once, for `apt-get download`)."""
    if path == DEFAULT_DATA and not (path / "corpus.jsonl").is_file():
        print(f"building python-faq into {path} (scripts/build_python_faq.py)", file=sys.stderr, flush=True)
        builder = Path(__file__).resolve().parent / "build_python_faq.py"
        subprocess.run([sys.executable, str(builder), str(path)], check=True)
    if not (path / "corpus.jsonl").is_file():
        sys.exit(f"{path} holds no corpus.jsonl: build a set with scripts/build_*.py (see scripts/eval_sets.md)")
    return path


def read_jsonl(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    out = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                out.append(json.loads(line))
                if limit and len(out) >= limit:
                    break
    return out


from esrag.stats import percentile  # noqa: E402, F401 - the one definition, shared with esrag eval


@contextmanager
def elasticsearch_url(url: str | None) -> Iterator[str]:
    """The given URL, or a noida-db server started for the duration of the block."""
    if url:
        yield url
        return
    exe = shutil.which("noida-db", path=str(Path(sys.executable).parent)) or shutil.which("noida-db")
    if exe is None:
        sys.exit("noida-db not found: pip install -e '.[test]' or pass --es-url")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tempfile.mkdtemp(prefix="esrag-bench-noida-")
    proc = subprocess.Popen([exe, "start", "--only", "elasticsearch", "--elasticsearch-port", str(port),
                             "--data-dir", data], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - loopback
                    break
            except OSError:
                time.sleep(0.2)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
        shutil.rmtree(data, ignore_errors=True)
