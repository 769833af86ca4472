"""Helpers shared by the evaluation-set builders (`build_*.py`; not part of the package).

A set is written in BEIR's layout: `corpus.jsonl` (`_id`, `title`, `text`), `queries.jsonl` (`_id`, `text`)
and `qrels/test.tsv` (`query-id`, `corpus-id`, `score`). The builders fetch their material with
`apt-get download` (no root needed, nothing installed) and unpack it with `dpkg-deb -x`.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIN_WORDS = 20
"""Sections with fewer whitespace-separated words than this are left out of a corpus (and so are their queries)."""


@dataclass(frozen=True)
class Doc:
    id: str
    title: str
    text: str


@dataclass(frozen=True)
class Query:
    id: str
    text: str
    doc_id: str
    """The one document judged relevant (known-item judgments)."""


def word_count(text: str) -> int:
    return len(text.split())


class BuildError(Exception):
    """A builder cannot go on; the message says what failed and how to fix it."""


def fetch_deb(package: str, dest: Path) -> Path:
    """Download `package`'s .deb with apt-get into `dest`, unpack it under `dest/root`, return that root.

    Raises BuildError naming the package and the command that failed (no package lists, no network...).
    """
    dest.mkdir(parents=True, exist_ok=True)
    cmd = ["apt-get", "download", package]
    try:
        done = subprocess.run(cmd, cwd=dest, capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
        raise BuildError("apt-get is not installed: the builders need Debian's apt-get and dpkg-deb") from e
    if done.returncode != 0:
        raise BuildError(
            f"`{' '.join(cmd)}` failed (exit {done.returncode}): {done.stderr.strip()[-500:]}\n"
            "Run `apt-get update` once, or pass --deb with a .deb you downloaded."
        )
    debs = sorted(dest.glob(f"{package}_*.deb"))
    if not debs:
        raise BuildError(f"apt-get download {package} wrote no {package}_*.deb in {dest}")
    return unpack_deb(debs[-1], dest / "root")


def unpack_deb(deb: Path, root: Path) -> Path:
    """Unpack `deb` under `root` with dpkg-deb and return `root`."""
    if not deb.is_file():
        raise BuildError(f"no such .deb: {deb}")
    try:
        done = subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
        raise BuildError("dpkg-deb is not installed: the builders need Debian's dpkg-deb to unpack a .deb") from e
    if done.returncode != 0:
        raise BuildError(f"`dpkg-deb -x {deb}` failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    return root


def package_root(package: str, deb: str | None, tmp: Path) -> Path:
    """The unpacked tree of `package`: from the given .deb file, or downloaded with apt-get."""
    if deb:
        print(f"unpacking {deb}", file=sys.stderr)
        return unpack_deb(Path(deb), tmp / "root")
    print(f"downloading {package} with apt-get", file=sys.stderr)
    return fetch_deb(package, tmp)


def check_set(docs: Sequence[Doc], queries: Sequence[Query]) -> None:
    """Raise BuildError if ids repeat, a query judges a missing document, or a query's text is in its document."""
    ids = [d.id for d in docs]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise BuildError(f"duplicate corpus ids: {dup}")
    by_id = {d.id: d for d in docs}
    for q in queries:
        doc = by_id.get(q.doc_id)
        if doc is None:
            raise BuildError(f"query {q.id} ({q.text!r}) judges {q.doc_id}, which is not in the corpus")
        if q.text.lower() in (doc.title + "\n" + doc.text).lower():
            raise BuildError(f"query {q.id} ({q.text!r}) appears verbatim in its judged document {q.doc_id}")


def write_beir(out_dir: Path, docs: Sequence[Doc], queries: Sequence[Query]) -> None:
    """Write the set to `out_dir` in BEIR's layout, all or nothing: files are written next to it, then moved in."""
    check_set(docs, queries)
    if out_dir.exists() and not out_dir.is_dir():
        raise BuildError(f"{out_dir} exists and is not a directory: give a directory to write the set into")
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".build-", dir=out_dir))
    try:
        (stage / "qrels").mkdir()
        with (stage / "corpus.jsonl").open("w", encoding="utf-8") as fh:
            for d in docs:
                fh.write(json.dumps({"_id": d.id, "title": d.title, "text": d.text}) + "\n")
        with (stage / "queries.jsonl").open("w", encoding="utf-8") as fh:
            for q in queries:
                fh.write(json.dumps({"_id": q.id, "text": q.text}) + "\n")
        with (stage / "qrels" / "test.tsv").open("w", encoding="utf-8") as fh:
            fh.write("query-id\tcorpus-id\tscore\n")
            for q in queries:
                fh.write(f"{q.id}\t{q.doc_id}\t1\n")
        (out_dir / "qrels").mkdir(exist_ok=True)
        for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
            os.replace(stage / name, out_dir / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def summary(out_dir: Path, docs: Sequence[Doc], queries: Sequence[Query], source: str) -> str:
    """One paragraph saying what was written where: counts and the corpus's word-length distribution."""
    words = sorted(word_count(d.text) for d in docs)
    p90 = words[min(len(words) - 1, int(0.9 * len(words)))] if words else 0
    median = statistics.median(words) if words else 0
    return (
        f"wrote {out_dir}/corpus.jsonl ({len(docs)} sections; words per section: median {median:g}, "
        f"p90 {p90}, max {words[-1] if words else 0}), {out_dir}/queries.jsonl ({len(queries)} queries) and "
        f"{out_dir}/qrels/test.tsv ({len(queries)} judgments, one relevant section each), from {source}"
    )


def run_builder(doc: str, package: str, where: str, build: Callable[[Path], tuple[Any, ...]],
                argv: list[str] | None = None) -> int:
    """The command line every builder shares: ``OUT_DIR [--deb FILE]``; fetch and unpack ``package``, run
    ``build(root) -> (docs, queries[, left_out])``, write the set and print its summary. Exit 1 on error."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0], epilog=doc.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=Path, help="where to write the set (outside the repository)")
    ap.add_argument("--deb", help=f"a downloaded {package} .deb to use instead of running apt-get download")
    args = ap.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            built = build(package_root(package, args.deb, Path(tmp)))
            docs, queries = built[0], built[1]
            write_beir(args.out_dir, docs, queries)
    except (BuildError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(summary(args.out_dir, docs, queries, f"{package} ({where})"))
    if len(built) > 2:
        print("queries left out: " + ", ".join(f"{n} {why}" for why, n in built[2].items()))
    return 0
