"""``esrag reindex``: rebuild the index behind its name with new settings, swap atomically, roll back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from esrag.cli.common import chunk_options, engine_from, index_settings_options, model_options, store_options

#: the flags that change the new version (the rest choose the store and how to embed)
CHANGES = ("model", "embedder", "analyzer", "index_options", "similarity", "embed_template", "chunk_size",
           "chunk_overlap", "query_prefix", "passage_prefix")


@click.command()
@click.option("--from", "sources", multiple=True, metavar="PATH", type=click.Path(exists=True, path_type=str),
              help="Read the documents again from these sources (as given to `esrag ingest`): needed when the "
                   "chunking or the embed template changes. Repeatable.")
@click.option("--rollback", is_flag=True, help="Make the previous version live again.")
@click.option("--delete-old", is_flag=True,
              help="Delete every version but the live one (after the swap, with a reindex).")
@click.option("--abort", is_flag=True,
              help="Clean up after a reindex that died: delete its half-built version, release the write freeze.")
@click.option("--force", is_flag=True, help="Swap even when the new version's counts differ from the live one's.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@chunk_options
@store_options
@model_options
@index_settings_options
def reindex(sources: tuple[str, ...], rollback: bool, delete_old: bool, abort: bool, force: bool, as_json: bool,
            **opts: Any) -> None:
    """Build a new version of the index (NAME-vN on Elasticsearch, NAME.vN.db on SQLite) with the settings
    given here, fill it from the stored chunks (vectors copied, or embedded again when the model changes)
    or from --from sources (a new chunking), check its counts, and make it live in one atomic step.

    Searches go on during the rebuild; writes to the index are refused until the swap. The old version
    stays for --rollback until --delete-old. `esrag status` lists the versions.
    """
    changes = {k: opts.pop(k) for k in CHANGES if opts.get(k) is not None}
    model = changes.get("model")
    if model is not None and Path(model).expanduser().is_dir():
        changes["model"] = str(Path(model).expanduser().resolve())  # a directory: usable from anywhere
    if sum([rollback, abort, bool(changes or sources)]) > 1:
        raise click.UsageError("--rollback and --abort take no other reindex settings, nor each other")
    with engine_from(**opts) as engine:
        reindexer = engine.reindexer()
        if abort:
            _say(as_json, {"cleaned": reindexer.abort()}, lambda r: r["cleaned"] or ["nothing to clean up"])
            return
        if rollback:
            before, after = engine.rollback()
            out: dict[str, Any] = {"from": before, "to": after}
            if delete_old:
                out["deleted"] = reindexer.delete_old()
            _say(as_json, out, lambda r: [f"rolled back: {r['from']} -> {r['to']} (live)",
                                          *(f"deleted {n}" for n in r.get("deleted", []))])
            return
        if delete_old and not changes and not sources:
            _say(as_json, {"deleted": reindexer.delete_old()},
                 lambda r: [f"deleted {n}" for n in r["deleted"]] or ["no old version to delete"])
            return
        report = engine.reindex(changes, sources, delete_old=delete_old, force=force)
    _say(as_json, report.to_dict(), _lines)


def _lines(r: dict[str, Any]) -> list[str]:
    how = {"copy": "vectors copied, nothing embedded", "embed": "stored text embedded again",
           "rechunk": "documents read again from the sources"}[r["mode"]]
    return [*r["cleaned"],
            f"reindexed {r['index']}: {r['old']} -> {r['new']} (live) in {r['seconds']:.1f} s",
            f"  changed      {'; '.join(r['reasons'])}",
            f"  content      {how}",
            f"  chunks       {r['chunks']} of {r['documents']} documents ({r['chunks_embedded']} embedded)",
            *(f"  note         {n}" for n in r["notes"]),
            *(f"  deleted      {n}" for n in r["deleted"]),
            "  the old version stays for `esrag reindex --rollback` until `--delete-old`"
            if not r["deleted"] else "  old versions deleted"]


def _say(as_json: bool, data: dict[str, Any], lines: Any) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for line in lines(data):
        click.echo(line)
