#!/usr/bin/env python3
"""Build the 126k-entry dictionary corpus for the throughput benchmarks (scripts/bench_store.py).

Source: Debian's `dict-gcide` package (the GNU Collaborative International Dictionary of English,
GPL-2+), read from its dictd files: `gcide.index` (headword, offset, length; numbers in dictd's base64)
and `gcide.dict.dz` (gzip). Each distinct definition block is one document (`_id` gcide:N in index order,
`title` its first headword, `text` the block). No queries, no judgments: speed and memory, not quality.

    python scripts/build_gcide_corpus.py OUT_DIR [--deb FILE]      # writes OUT_DIR/corpus.jsonl

Like the evaluation-set builders it downloads the package with `apt-get download` (run `apt-get update`
once) into a temporary directory and installs nothing; the corpus is written all at once.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _evalset import BuildError, package_root  # noqa: E402

_DIGITS = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def dictd_number(text: str) -> int:
    """A number as dictd's index writes it: big-endian base 64 over A-Z a-z 0-9 + /."""
    value = 0
    for c in text:
        value = value * 64 + _DIGITS[c]
    return value


def entries(index: str, data: bytes) -> list[tuple[str, str]]:
    """(first headword, text) of each distinct definition block, in index order; dictd's own
    ``00-database-*`` entries are left out."""
    first: dict[tuple[int, int], str] = {}
    for line in index.splitlines():
        fields = line.split("\t")
        if len(fields) < 3 or fields[0].startswith("00-database"):
            continue
        first.setdefault((dictd_number(fields[1]), dictd_number(fields[2])), fields[0])
    return [(word, data[o:o + n].decode("utf-8", "replace").strip()) for (o, n), word in first.items()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--deb", help="a downloaded dict-gcide .deb to use instead of apt-get download")
    args = ap.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            base = package_root("dict-gcide", args.deb, Path(tmp)) / "usr" / "share" / "dictd"
            found = entries((base / "gcide.index").read_text(encoding="utf-8"),
                            gzip.decompress((base / "gcide.dict.dz").read_bytes()))
    except (BuildError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / "corpus.jsonl"
    part = out.with_suffix(".jsonl.part")
    with part.open("w", encoding="utf-8") as f:
        for i, (word, text) in enumerate(found):
            f.write(json.dumps({"_id": f"gcide:{i}", "title": word, "text": text}) + "\n")
    os.replace(part, out)
    print(f"wrote {out} ({len(found):,} documents)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
