"""``esrag reindex``: rebuild the index behind its name with new settings, swap atomically, roll back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from esrag.cli.common import (
    chunk_options,
    engine_from,
    index_settings_options,
    model_options,
    progress_flag,
    store_options,
)
from esrag.cli.index import SOURCE_PARAMS, file_options, make_source, source_options
from esrag.errors import EsragError

#: the flags that change the new version (the rest choose the store and how to embed)
CHANGES = ("model", "embedder", "analyzer", "index_options", "similarity", "embed_template", "chunk_size",
           "chunk_overlap", "query_prefix", "passage_prefix")


@click.command()
@click.option("--from", "sources", multiple=True, metavar="PATH", type=click.Path(exists=True, path_type=str),
              help="Read the documents again from these files or directories (as given to `esrag ingest`, with "
                   "the same --glob, --exclude, --metadata, --doc-prefix): needed when the chunking or the embed "
                   "template changes. Repeatable.")
@source_options
@file_options
@click.option("--rollback", is_flag=True, help="Make the previous version live again.")
@click.option("--delete-old", is_flag=True,
              help="Delete every version but the live one (after the swap, with a reindex).")
@click.option("--abort", is_flag=True,
              help="Clean up after a reindex that died: delete its half-built version, release the write freeze.")
@click.option("--force", is_flag=True, help="Swap even when the new version's counts differ from the live one's.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--progress/--no-progress", default=None,
              help="A progress bar on stderr while the new version fills. [default: when stderr is a terminal]")
@chunk_options
@store_options
@model_options
@index_settings_options
def reindex(sources: tuple[str, ...], rollback: bool, delete_old: bool, abort: bool, force: bool, as_json: bool,
            progress: bool | None, **opts: Any) -> None:
    """Build a new version of the index (NAME-vN on Elasticsearch, NAME.vN.db on SQLite) with the settings
    given here, fill it from the stored chunks (vectors copied, or embedded again when the model changes)
    or from the sources read again (a new chunking): files with --from PATH, the records of an
    Elasticsearch index with --from-index NAME (and the options of `esrag ingest --from-index`), a
    --source plugin; --from and --from-index together read both. Check its counts, and make it live in
    one atomic step.

    Searches go on during the rebuild; writes to the index are refused until the swap. The old version
    stays for --rollback until --delete-old. `esrag status` lists the versions.
    """
    changes = {k: opts.pop(k) for k in CHANGES if opts.get(k) is not None}
    chosen = {k: opts.pop(k) for k in SOURCE_PARAMS}
    model = changes.get("model")
    if model is not None and Path(model).expanduser().is_dir():
        changes["model"] = str(Path(model).expanduser().resolve())  # a directory: usable from anywhere
    files_only = ("globs", "excludes", "metadata", "follow_symlinks", "max_file_size", "doc_prefix")
    no_files = {**chosen, "globs": (), "excludes": (), "metadata": (), "follow_symlinks": False, "doc_prefix": ""}
    other_given = any(chosen[k] not in (None, ()) for k in SOURCE_PARAMS if k not in files_only)
    if not sources and any(chosen[k] for k in files_only if k != "max_file_size"):
        raise click.UsageError("--glob, --exclude, --metadata, --doc-prefix and --follow-symlinks choose the files "
                               "of --from PATH; give --from")
    if sum([rollback, abort, bool(changes or sources or other_given)]) > 1:
        raise click.UsageError("--rollback and --abort take no other reindex settings, nor each other")
    with engine_from(**opts) as engine:
        only_files = {k: (chosen[k] if k in files_only else None) for k in SOURCE_PARAMS}
        given = [s for s in (make_source(engine, sources, only_files, "--from") if sources else None,
                             make_source(engine, (), no_files) if other_given else None) if s is not None]
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
        if delete_old and not changes and not given:
            _say(as_json, {"deleted": reindexer.delete_old()},
                 lambda r: [f"deleted {n}" for n in r["deleted"]] or ["no old version to delete"])
            return
        bar = _bar(engine) if progress_flag(progress) else None
        try:
            report = engine.reindex(changes, given, delete_old=delete_old, force=force,
                                    on_progress=bar.show if bar is not None else None)
        finally:
            if bar is not None:
                bar.close()
    _say(as_json, report.to_dict(), _lines)


class _Bar:
    """A progress bar over the live version's chunks: those copied or embedded so far into the new one (a
    chunk whose text another chunk shares is embedded once: the bar may stop short of the total)."""

    def __init__(self, total: int) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total or None, unit="chunks", desc="reindex", dynamic_ncols=True, leave=False)

    def show(self, report: Any) -> None:
        done = report.chunks_copied + report.chunks_embedded
        total = self._bar.total
        self._bar.update(max(0, (min(done, total) if total else done) - self._bar.n))
        self._bar.set_postfix(copied=report.chunks_copied, embedded=report.chunks_embedded)  # one call a batch

    def close(self) -> None:
        self._bar.close()


def _bar(engine: Any) -> _Bar:
    try:
        total = engine.store.count().chunks if engine.store.exists() else 0
    except EsragError:
        total = 0
    return _Bar(total)


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
