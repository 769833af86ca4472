"""Exact lookups on real text: how often the one document that holds a query's identifier or phrase ranks first.

Queries are built from a BEIR corpus (python-faq by default: the Python documentation):

- ``identifier``: a token with a digit, ``_``, ``-``, ``.`` or ``::`` that occurs in exactly one document
  (``PyErr_SetString``, ``sys.getrecursionlimit``, ``utf-16-le``...), sent as it is;
- ``phrase``: three plain words in a row that occur together in exactly one document, sent in double quotes
  (as people paste them; esrag has no phrase operator, so the quotes are only characters).

Each query is sent through ``Engine.search`` (the path ``esrag search`` and the API take) in bm25, dense and
hybrid mode, at the defaults, and the figures are success@1 (the document that holds the string is the
first hit) and MRR@10 over documents. The index is the one ``esrag eval`` builds for the set: run that first
(it embeds the corpus once), then this:

    esrag eval /tmp/sets/python-faq --sqlite-dir /tmp/evalstore --methods bm25
    python scripts/bench_exact_lookups.py /tmp/sets/python-faq --sqlite-dir /tmp/evalstore

It only reads: nothing is ingested, so the same index can be measured by two versions of esrag in turn.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import defaultdict
from pathlib import Path

from esrag.config import Settings
from esrag.engine import Engine
from esrag.quality.evaluation import eval_index_name, load_beir

IDENTIFIER = re.compile(r"[A-Za-z0-9_]+(?:(?:::|[.\-])[A-Za-z0-9_]+)*")
WORD = re.compile(r"[a-z]{3,}")
MODES = ("bm25", "dense", "hybrid")


def identifier_queries(texts: dict[str, str], limit: int, rng: random.Random) -> dict[str, str]:
    """identifier -> the only document holding it (as a whole token)."""
    holders: dict[str, set[str]] = defaultdict(set)
    for doc_id, text in texts.items():
        for tok in set(IDENTIFIER.findall(text)):
            tok = tok.strip("._-")
            if (len(tok) >= 4 and re.search(r"[A-Za-z]", tok) and re.search(r"[\d_.\-]|::", tok)
                    and not re.fullmatch(r"[\d.\-]+", tok)):
                holders[tok].add(doc_id)
    unique = sorted(t for t, docs in holders.items() if len(docs) == 1)
    picked = rng.sample(unique, min(limit, len(unique)))
    return {t: next(iter(holders[t])) for t in picked}


def phrase_queries(texts: dict[str, str], limit: int, rng: random.Random) -> dict[str, str]:
    """'"w1 w2 w3"' -> the only document holding those three words in a row (words of 3+ letters)."""
    holders: dict[str, set[str]] = defaultdict(set)
    for doc_id, text in texts.items():
        words = WORD.findall(text.lower())
        for i in range(len(words) - 2):
            holders[" ".join(words[i:i + 3])].add(doc_id)
    unique = sorted(p for p, docs in holders.items() if len(docs) == 1)
    picked = rng.sample(unique, min(limit, len(unique)))
    return {f'"{p}"': next(iter(holders[p])) for p in picked}


def measure(engine: Engine, queries: dict[str, str]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for mode in MODES:
        first = rr = 0.0
        for query, doc in queries.items():
            docs = list(dict.fromkeys(h.doc_id for h in engine.search(query, mode=mode, k=30).hits))[:10]
            first += docs[:1] == [doc]
            rr += 1.0 / (docs.index(doc) + 1) if doc in docs else 0.0
        out[mode] = {"success@1": first / len(queries), "mrr@10": rr / len(queries)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path, help="BEIR dataset dir whose index `esrag eval` built")
    ap.add_argument("--sqlite-dir", required=True, help="the --sqlite-dir given to esrag eval")
    ap.add_argument("--limit", type=int, default=200, help="queries of each kind")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    ds = load_beir(args.dataset)
    settings = Settings(store="sqlite", sqlite_dir=args.sqlite_dir)
    index = eval_index_name(ds.name, settings.model, settings.chunk_size, settings.chunk_overlap,
                            settings.embed_template)
    engine = Engine(settings.model_copy(update={"index": index}))
    if not engine.store.exists():
        sys.exit(f"no index {index!r} in {args.sqlite_dir}: run `esrag eval {args.dataset} --sqlite-dir "
                 f"{args.sqlite_dir}` first")
    texts = {d.doc_id: f"{d.title}\n{d.text}" for d in ds.documents}
    rng = random.Random(args.seed)
    sets = {"identifier": identifier_queries(texts, args.limit, rng), "phrase": phrase_queries(texts, args.limit, rng)}
    report = {"dataset": ds.name, "index": index, "queries": {k: len(v) for k, v in sets.items()},
              "results": {kind: measure(engine, queries) for kind, queries in sets.items()}}
    for kind, res in report["results"].items():
        print(f"{kind} ({len(sets[kind])} queries, e.g. {', '.join(list(sets[kind])[:3])})")
        for mode, fig in res.items():
            print(f"  {mode:<7} success@1 {fig['success@1']:.3f}   mrr@10 {fig['mrr@10']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    engine.close()


if __name__ == "__main__":
    main()
