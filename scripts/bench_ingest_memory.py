"""Peak memory of ingesting one large text file, against the file's size: streaming keeps it flat.

    python scripts/bench_ingest_memory.py                        # 10 MB and 80 MB .txt files, SQLite
    python scripts/bench_ingest_memory.py --sizes 10 80 --whole  # also with streaming off, for comparison

Each file is generated prose (sentences of pseudo-words, one a line, in paragraphs; no two alike) and is
ingested by a fresh process into an empty temporary SQLite index. The embedder is a cheap deterministic
one registered through an entry point, as a third-party plugin would be (hashed bag of words, no model), so
that a model dominates neither the time nor the memory. The peak RSS of each process is the ``ru_maxrss``
that the parent collects for it (``os.wait4``: the figure ``getrusage(RUSAGE_CHILDREN)`` folds in, for that
one child). Target: the largest file's peak at most 1.3x the smallest's. ``--whole`` runs every file again
with streaming off (``loaders.STREAM_BYTES`` above the file size): the whole file read at once, as before.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from esrag.embedders.base import Embedder  # noqa: E402

PLUGIN = "bench_words"
ENTRY_POINTS = f"[esrag.embedders]\n{PLUGIN} = bench_ingest_memory:HashedWords\n"


class HashedWords(Embedder):
    """Vectors of hashed lowercase words, no model; tokens are whitespace-separated words. Thread-safe."""

    model_name = "bench-hashed-words-64"
    dims = 64
    max_tokens = 100_000

    def __init__(self, settings: Any = None) -> None:
        pass

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dims), dtype=np.float32)
        for i, text in enumerate(texts):
            buckets = [zlib.crc32(w.encode()) % self.dims for w in text.lower().split()] or [0]
            out[i] = np.bincount(buckets, minlength=self.dims)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) for t in texts]


def write_prose(path: Path, size: int, seed: int) -> None:
    """About ``size`` bytes of prose: paragraphs of 2-7 sentences, a sentence a line, blank lines between."""
    rng = random.Random(seed)
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    vocab = ["".join(rng.choices(letters, weights=range(26, 0, -1), k=rng.randint(1, 10))) for _ in range(20000)]
    written = 0
    with path.open("w", encoding="utf-8") as f:
        while written < size:
            sentences = [" ".join(rng.choices(vocab, k=rng.randint(5, 20))).capitalize() + "."
                         for _ in range(rng.randint(2, 7))]
            paragraph = "\n".join(sentences) + "\n\n"
            f.write(paragraph)
            written += len(paragraph)


def child(file: Path, sqlite_dir: Path, stream_bytes: int | None) -> None:
    """Ingest ``file`` into a new SQLite index (in this fresh process) and print the report as JSON."""
    from esrag.config import Settings
    from esrag.engine import Engine
    from esrag.sources import loaders

    if stream_bytes is not None:
        loaders.STREAM_BYTES = stream_bytes
    settings = Settings(store="sqlite", sqlite_dir=str(sqlite_dir), index="bench", embedder=PLUGIN)  # type: ignore[call-arg]
    engine = Engine(settings)
    try:
        report = engine.ingest_paths([file])
    finally:
        engine.close()
    assert report.ok, report.to_dict()
    print(json.dumps({k: report.to_dict()[k] for k in ("documents", "chunks_written", "chunks_embedded",
                                                       "seconds")}))


def run_child(file: Path, work: Path, site: Path, stream_bytes: int | None) -> dict[str, Any]:
    """One fresh ingest process: its report and its peak RSS in MiB."""
    sqlite_dir = Path(tempfile.mkdtemp(dir=work, prefix="store-"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(Path(__file__).resolve().parent),
                                                        os.environ.get("PYTHONPATH", "")])}
    args = [sys.executable, __file__, "--child", str(file), str(sqlite_dir)]
    if stream_bytes is not None:
        args += ["--stream-bytes", str(stream_bytes)]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit(f"the ingest of {file} failed (exit {proc.returncode})")
    for p in sorted(sqlite_dir.iterdir()):
        p.unlink()
    sqlite_dir.rmdir()
    return {**json.loads(out), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 80], help="file sizes in MB (10^6 bytes)")
    parser.add_argument("--whole", action="store_true", help="also ingest every file with streaming off")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--child", nargs=2, metavar=("FILE", "SQLITE_DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--stream-bytes", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]), args.stream_bytes)
        return
    with tempfile.TemporaryDirectory(prefix="esrag-bench-memory-") as tmp:
        work = Path(tmp)
        site = work / "site"
        dist = site / "esrag_bench_words-1.0.dist-info"
        dist.mkdir(parents=True)
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: esrag-bench-words\nVersion: 1.0\n")
        (dist / "entry_points.txt").write_text(ENTRY_POINTS)
        modes = [("stream", None)] + ([("whole", 10**15)] if args.whole else [])
        rows = []
        for mb in sorted(args.sizes):
            file = work / f"prose-{mb}mb.txt"
            write_prose(file, mb * 10**6, args.seed + mb)
            for mode, stream_bytes in modes:
                row = {"mode": mode, "file_mb": round(file.stat().st_size / 10**6, 1),
                       **run_child(file, work, site, stream_bytes)}
                rows.append(row)
                if not args.json:
                    print(f"{mode:6} {row['file_mb']:6.1f} MB: peak RSS {row['peak_rss_mib']:7.1f} MiB, "
                          f"{row['documents']} document(s), {row['chunks_written']} chunks, {row['seconds']} s",
                          flush=True)
            file.unlink()
        ratios = {}
        for mode, _ in modes:
            peaks = [r["peak_rss_mib"] for r in rows if r["mode"] == mode]
            ratios[mode] = round(peaks[-1] / peaks[0], 3)
        if args.json:
            print(json.dumps({"runs": rows, "peak_ratio_largest_to_smallest": ratios}, indent=2))
        else:
            for mode, ratio in ratios.items():
                print(f"{mode}: peak RSS of the largest file / the smallest: {ratio}x"
                      + (" (target <= 1.3x)" if mode == "stream" else ""))


if __name__ == "__main__":
    main()
