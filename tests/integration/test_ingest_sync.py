"""Ingest keeps the index equal to the corpus: unchanged re-runs touch nothing, edits re-embed only new
text, moves and renames re-embed nothing, ``prune`` removes what is gone under the given roots and only
there, JSONL records have stable ids, large files stream as segments that sync like records. Real
packaged MiniLM, real stores (run one with ``-k sqlite``)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from esrag.config import Settings
from esrag.errors import ConfigError, StoreError
from esrag.ingest.context import TITLE_AND_HEADINGS
from esrag.ingest.pipeline import IngestAborted, Ingestor, IngestReport
from esrag.sources import loaders
from esrag.sources.files import FilesSource, documents_for_path
from esrag.stores.base import Store
from esrag.types import EmbeddedChunk, SearchRequest, WriteResult

pytestmark = pytest.mark.integration

MakeStore = Callable[..., Store]
WORDS = ("river stone lamp orbit maple signal copper garden window thunder harbor pixel meadow engine "
         "violet canyon ledger falcon prism saddle").split()


class Spy:
    """The real embedder, with a record of which of its members were used."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.used: list[str] = []
        self.embedded = 0
        self.texts: list[str] = []

    @property
    def model_name(self) -> str:
        return str(self._inner.model_name)

    def __getattr__(self, name: str) -> Any:
        self.used.append(name)
        return getattr(self._inner, name)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        self.used.append("embed_documents")
        self.embedded += len(texts)
        self.texts += texts
        return self._inner.embed_documents(texts)  # type: ignore[no-any-return]


def write_corpus(root: Path, n: int = 6, version: str = "v1") -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        paras = [f"Document {i} {version} part {j}. " + " ".join(WORDS[(i * 3 + j + k) % len(WORDS)] for k in range(30))
                 for j in range(3)]
        (root / f"doc{i}.md").write_text("\n\n".join(paras))


@pytest.fixture
def ingest(make_store: MakeStore, embedder: Any) -> Callable[..., tuple[IngestReport, Spy]]:
    store = make_store(chunk_size=48, chunk_overlap=0)

    def run(*paths: Path, **kwargs: Any) -> tuple[IngestReport, Spy]:
        spy = Spy(embedder)
        ingestor = Ingestor(store, spy, store.settings)  # type: ignore[arg-type, attr-defined]
        prune = kwargs.pop("prune", False)
        return ingestor.ingest(FilesSource(list(paths), **kwargs), prune=prune), spy

    run.store = store  # type: ignore[attr-defined]
    run.embedder = embedder  # type: ignore[attr-defined]
    return run


def docs_of(store: Store) -> set[str]:
    return set(store.list_documents())


def test_unchanged_rerun_touches_no_part_of_the_embedder(ingest: Any, tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    write_corpus(root)
    first, _ = ingest(root)
    assert first.documents_new == 6 and first.chunks_embedded > 6 and first.ok
    again, spy = ingest(root)
    assert again.documents_unchanged == 6 and again.chunks_unchanged == first.chunks_written
    assert again.chunks_embedded == again.chunks_written == again.chunks_deleted == 0
    assert spy.used == []  # no count_tokens, max_tokens, dims or embed_*: a lazy model is never loaded


def test_doc_ids_are_relative_so_another_checkout_path_is_the_same_corpus(ingest: Any, tmp_path: Path) -> None:
    write_corpus(tmp_path / "one" / "corpus")
    ingest(tmp_path / "one" / "corpus")
    assert docs_of(ingest.store) == {f"corpus/doc{i}.md" for i in range(6)}
    shutil.copytree(tmp_path / "one" / "corpus", tmp_path / "two" / "corpus")
    again, spy = ingest(tmp_path / "two" / "corpus")
    assert again.documents_unchanged == 6 and spy.embedded == 0


@pytest.mark.parametrize("template", ["default", TITLE_AND_HEADINGS])
def test_embedded_text_carries_the_context_while_the_stored_text_is_the_chunk(
        make_store: MakeStore, embedder: Any, tmp_path: Path, template: str) -> None:
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "ops.md").write_text("# Operations\n\nIntro.\n\n## Setup\n\n### Connecting to Elasticsearch\n\n"
                                 "Set es_url to the address of the cluster.\n")
    (root / "plain.txt").write_text("A file without a title of its own.")
    chosen = {} if template == "default" else {"embed_template": template}
    store = make_store(chunk_size=48, chunk_overlap=0, **chosen)
    spy = Spy(embedder)
    report = Ingestor(store, spy, store.settings).ingest(FilesSource([root]))  # type: ignore[attr-defined]
    assert report.ok
    title = "Operations\n" if template == TITLE_AND_HEADINGS else ""  # the default names the headings only
    assert sorted(spy.texts) == sorted([
        "A file without a title of its own.",  # no headings, and its title is only the file name
        f"{title}\n# Operations\n\nIntro." if title else "# Operations\n\nIntro.",
        f"{title}Setup\n\n## Setup",
        f"{title}Setup > Connecting to Elasticsearch\n\n### Connecting to Elasticsearch\n\n"
        "Set es_url to the address of the cluster.",
    ])
    hits = store.search(SearchRequest(text="cluster", vector=None, candidates=5)).bm25
    assert [h.text for h in hits] == ["### Connecting to Elasticsearch\n\nSet es_url to the address of the cluster."]
    assert store.read_meta().embed_template == store.settings.embed_template  # type: ignore[attr-defined]


def test_a_new_embed_template_re_embeds_what_is_ingested_and_is_recorded(ingest: Any, tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "a.md").write_text("# Alpha\n\nLighthouses guide ships.")
    ingest(root)
    store = ingest.store

    def run(template: str) -> IngestReport:
        return Ingestor(store, Spy(ingest.embedder), store.settings.replace(embed_template=template)).ingest(
            FilesSource([root]))

    titled = run(TITLE_AND_HEADINGS)  # a new embedded text: "Alpha\n\n# Alpha..."
    assert titled.documents_changed == 1 and titled.chunks_embedded == 1 and titled.chunks_deleted == 1
    assert any("other embed_template" in w for w in titled.warnings)
    assert store.read_meta().embed_template == TITLE_AND_HEADINGS
    assert run(TITLE_AND_HEADINGS).documents_unchanged == 1
    plain = run("{text}")  # the default's vector went with its chunk: embedded again
    assert plain.documents_changed == 1 and plain.chunks_embedded == 1
    assert store.read_meta().embed_template == "{text}"


def test_a_new_analyzer_rebuilds_the_bm25_index_on_sqlite_and_is_refused_on_elasticsearch(
        make_store: MakeStore, embedder: Any, tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "a.md").write_text("Connecting to the cluster.")
    store = make_store(analyzer="standard")
    Ingestor(store, Spy(embedder), store.settings).ingest(FilesSource([root]))  # type: ignore[attr-defined]
    assert store.search(SearchRequest(text="connect", vector=None, candidates=5)).bm25 == []
    data = {k: v for k, v in store.settings.model_dump(exclude={"sources"}).items()  # type: ignore[attr-defined]
            if k != "analyzer"}
    default = Settings(**data)  # the default analyzer (english), not chosen explicitly
    assert default.analyzer == "english" and "analyzer" not in default.sources
    kept = Ingestor(store, Spy(embedder), default).ingest(FilesSource([root]))
    assert kept.warnings == [] and store.read_meta().analyzer == "standard"  # the index keeps its own
    english = Ingestor(store, Spy(embedder), store.settings.replace(analyzer="english"))  # type: ignore[attr-defined]
    if store.name == "elasticsearch":
        with pytest.raises(ConfigError, match="cannot change its analyzer; set analyzer to 'standard'"):
            english.ingest(FilesSource([root]))
        return
    report = english.ingest(FilesSource([root]))
    assert report.chunks_embedded == 0 and any("other analyzer" in w for w in report.warnings)
    assert store.read_meta().analyzer == "english"
    assert len(store.search(SearchRequest(text="connect", vector=None, candidates=5)).bm25) == 1


def test_an_edit_embeds_only_the_new_text_and_deletes_the_stale_chunks(ingest: Any, tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    write_corpus(root)
    first, _ = ingest(root)
    path = root / "doc2.md"
    path.write_text(path.read_text() + "\n\nAn appended paragraph about lighthouses.")
    edited, spy = ingest(root)
    assert edited.documents_changed == 1 and edited.documents_unchanged == 5
    assert 1 <= spy.embedded <= 2  # the new paragraph (and at most the chunk it joined)
    assert edited.chunks_reused >= 1 and edited.chunks_deleted >= 1
    refs = ingest.store.list_chunks(["corpus/doc2.md"])["corpus/doc2.md"]
    assert len({r.doc_sha for r in refs}) == 1 and len(refs) == refs[0].chunk_count
    ingest.store.refresh()
    assert ingest.store.count().chunks == first.chunks_written - edited.chunks_deleted + edited.chunks_written


def test_renames_and_moves_embed_nothing_and_prune_removes_the_old_copies(ingest: Any, tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    write_corpus(root)
    first, _ = ingest(root)
    (root / "doc0.md").rename(root / "renamed.md")
    (root / "sub").mkdir()
    (root / "doc1.md").rename(root / "sub" / "moved.md")
    moved, spy = ingest(root, prune=True)
    assert spy.embedded == 0 and moved.chunks_embedded == 0
    assert moved.documents_new == 2 and moved.chunks_reused == moved.chunks_written > 0
    assert moved.documents_removed == 2
    assert docs_of(ingest.store) == {"corpus/renamed.md", "corpus/sub/moved.md",
                                     *(f"corpus/doc{i}.md" for i in range(2, 6))}
    ingest.store.refresh()
    assert ingest.store.count().chunks == first.chunks_written


def test_without_prune_gone_documents_are_counted_not_deleted(ingest: Any, tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    write_corpus(root)
    ingest(root)
    (root / "doc3.md").unlink()
    (root / "doc4.md").write_text("   \n")  # blanked: a leaked secret removed from the file
    kept, _ = ingest(root)
    assert kept.documents_gone == 2 and kept.documents_removed == 0
    assert {"corpus/doc3.md", "corpus/doc4.md"} <= docs_of(ingest.store)
    pruned, _ = ingest(root, prune=True)
    assert pruned.documents_gone == pruned.documents_removed == 2 and pruned.chunks_deleted > 0
    assert docs_of(ingest.store) == {f"corpus/doc{i}.md" for i in (0, 1, 2, 5)}
    ingest.store.refresh()
    hits = ingest.store.search(SearchRequest(text="Document 4", vector=None, candidates=50)).bm25
    assert all(h.doc_id != "corpus/doc4.md" for h in hits)


def test_prune_considers_only_documents_under_the_given_roots(ingest: Any, tmp_path: Path) -> None:
    write_corpus(tmp_path / "a", n=2)
    write_corpus(tmp_path / "b", n=2, version="other")
    (tmp_path / "single.md").write_text("A single file ingested on its own.")
    ingest(tmp_path / "a", tmp_path / "b", tmp_path / "single.md")
    (tmp_path / "a" / "doc0.md").unlink()
    report, _ = ingest(tmp_path / "a", prune=True)
    assert report.documents_removed == 1
    assert docs_of(ingest.store) == {"a/doc1.md", "b/doc0.md", "b/doc1.md", "single.md"}


def test_jsonl_records_have_stable_ids_and_delete_by_file_finds_them_all(ingest: Any, tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    lines = [f'{{"text": "Record number {i} about {WORDS[i]} and {WORDS[i + 1]}."}}' for i in range(5)]
    path.write_text("\n".join(lines) + "\n")
    first, _ = ingest(path)
    assert first.documents_new == 5
    path.write_text('{"text": "A record inserted at the top."}\n' + "\n".join(lines) + "\n")
    inserted, spy = ingest(path)
    assert inserted.documents_new == 1 and inserted.documents_unchanged == 5 and spy.embedded == 1
    ids = documents_for_path(ingest.store, path)
    assert len(ids) == 6 and all(i.startswith("corpus.jsonl#sha-") for i in ids)
    assert documents_for_path(ingest.store, tmp_path / "elsewhere" / "corpus.jsonl") == ids  # by its tail
    assert documents_for_path(ingest.store, tmp_path / "other.jsonl") == []


@pytest.fixture
def small_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files over 3,000 bytes stream, in segments of about 600 characters."""
    monkeypatch.setattr(loaders, "STREAM_BYTES", 3000)
    monkeypatch.setattr(loaders, "SEGMENT_CHARS", 600)


def long_text(paragraphs: int) -> str:
    return "\n\n".join(f"Paragraph {i}: " + " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(25))
                       for i in range(paragraphs)) + "\n"


def test_a_large_file_streams_as_segments_that_re_ingest_and_edit_like_records(
        ingest: Any, tmp_path: Path, small_streams: None) -> None:
    root = tmp_path / "corpus"
    root.mkdir()
    path = root / "big.md"
    path.write_text("# Field notes\n\n" + long_text(60))
    (root / "small.md").write_text("A small file about orchards.")
    first, _ = ingest(root)
    parts = documents_for_path(ingest.store, path)
    assert first.ok and first.documents_new == len(parts) + 1 and len(parts) > 5
    assert all(p.startswith("corpus/big.md#part-") for p in parts)
    again, spy = ingest(root)
    assert again.documents_unchanged == len(parts) + 1 and spy.used == []
    text = path.read_text()
    at = text.index("Paragraph 2:")
    path.write_text(text[:at] + "A paragraph inserted near the start, about lighthouses.\n\n" + text[at:])
    edited, spy = ingest(root)
    now = documents_for_path(ingest.store, path)
    assert edited.ok and 1 <= edited.documents_new <= 2
    assert edited.documents_unchanged == len(now) + 1 - edited.documents_new
    assert 1 <= spy.embedded <= 4  # the new paragraph and what moved with it; the rest is reused
    # the edited segments' old versions are gone without --prune: the file's earlier version
    assert edited.documents_gone == 0 and edited.chunks_deleted > 0
    assert docs_of(ingest.store) == {*now, "corpus/small.md"} and len(set(parts) - set(now)) >= 1
    ingest.store.refresh()
    stored = ingest.store.list_chunks(now)
    assert ingest.store.count().chunks == sum(len(refs) for refs in stored.values()) + 1
    assert all(len(refs) == refs[0].chunk_count for refs in stored.values())


def test_delete_by_file_and_prune_remove_every_segment(ingest: Any, tmp_path: Path, small_streams: None) -> None:
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "one.txt").write_text(long_text(40))
    (root / "two.txt").write_text(long_text(30).replace("Paragraph", "Section"))
    ingest(root)
    one = documents_for_path(ingest.store, root / "one.txt")
    two = documents_for_path(ingest.store, tmp_path / "elsewhere" / "corpus" / "two.txt")  # by its tail
    assert len(one) > 3 and len(two) > 3 and docs_of(ingest.store) == {*one, *two}
    assert ingest.store.delete_documents(one) > 0  # what `esrag delete --doc corpus/one.txt` deletes
    ingest.store.refresh()
    assert docs_of(ingest.store) == set(two)
    (root / "two.txt").unlink()
    kept, _ = ingest(root)
    assert kept.documents_gone == len(two)
    assert docs_of(ingest.store) == {*documents_for_path(ingest.store, root / "one.txt"), *two}
    pruned, _ = ingest(root, prune=True)
    assert pruned.documents_removed == len(two) and documents_for_path(ingest.store, root / "two.txt") == []


def test_a_file_growing_past_the_threshold_replaces_its_whole_document_and_back(
        ingest: Any, tmp_path: Path, small_streams: None) -> None:
    path = tmp_path / "log.txt"
    path.write_text(long_text(12))  # under 3,000 bytes: one document
    first, _ = ingest(path)
    assert docs_of(ingest.store) == {"log.txt"}
    path.write_text(long_text(40))
    grown, spy = ingest(path)
    parts = documents_for_path(ingest.store, path)
    assert docs_of(ingest.store) == set(parts) and len(parts) > 3 and "log.txt" not in parts
    assert grown.documents_gone == 0 and spy.embedded < grown.chunks_written  # old paragraphs' vectors reused
    path.write_text(long_text(12))
    shrunk, spy = ingest(path)
    assert docs_of(ingest.store) == {"log.txt"} and spy.embedded < first.chunks_embedded


def test_a_path_with_no_supported_file_creates_nothing(ingest: Any, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "image.png").write_bytes(b"\x89PNG")
    report, spy = ingest(tmp_path / "empty")
    assert report.nothing_found and report.exit_code == 2 and report.warnings
    assert not ingest.store.exists() and spy.used == []
    write_corpus(tmp_path / "corpus", n=1)
    globbed, _ = ingest(tmp_path / "corpus", glob=["*.rst"])
    assert globbed.exit_code == 2 and "--glob *.rst" in globbed.warnings[0]


def test_given_metadata_wins_over_a_record_field_with_a_warning(ingest: Any, tmp_path: Path) -> None:
    path = tmp_path / "tagged.jsonl"
    path.write_text('{"id": "1", "text": "first record", "team": "alpha"}\n'
                    '{"id": "2", "text": "second record", "team": "beta"}\n')
    report, _ = ingest(path, metadata={"team": "search"})
    assert len(report.warnings) == 1 and "'team'" in report.warnings[0] and "'search'" in report.warnings[0]
    ingest.store.refresh()
    hits = ingest.store.search(SearchRequest(text="record", vector=None, candidates=5,
                                             filters={"team": ("search",)})).bm25
    assert len(hits) == 2


class FailingStore:
    """A real store whose second write raises, as a store that goes away mid-run does."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner
        self.writes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def write(self, chunks: Any, delete_ids: Sequence[str] = ()) -> WriteResult:
        self.writes += 1
        if self.writes == 2:
            raise StoreError("the store went away")
        items: list[EmbeddedChunk] = list(chunks)
        return self._inner.write(items, delete_ids)


def test_a_writer_failure_stops_the_embedder_and_reports_what_was_written(
        make_store: MakeStore, embedder: Any, tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    write_corpus(root, n=40)
    inner = make_store(chunk_size=48, chunk_overlap=0, batch_size=8)
    spy = Spy(embedder)
    ingestor = Ingestor(FailingStore(inner), spy, inner.settings, window=16)  # type: ignore[arg-type, attr-defined]
    with pytest.raises(IngestAborted, match="the store went away") as raised:
        ingestor.ingest(FilesSource([root]))
    report = raised.value.report
    assert report.aborted and not report.ok and report.exit_code == 1
    assert report.chunks_written > 0 and report.documents_not_written
    total = sum(len(inner.list_chunks([f"corpus/doc{i}.md"]).get(f"corpus/doc{i}.md", [])) for i in range(40))
    assert total == report.chunks_written
    # stopped promptly: far from the whole corpus (40 documents x ~6 chunks) was embedded
    assert spy.embedded < 120


# -- through the CLI ----------------------------------------------------------------------------------------


def cli(settings: Any, *args: str) -> Any:
    from click.testing import CliRunner

    from esrag.cli import main

    store = ["--index", settings.index, "--store", settings.store_name]
    store += ["--es-url", settings.es_url] if settings.es_url else ["--sqlite-dir", settings.sqlite_dir]
    return CliRunner().invoke(main, [*args, *store], catch_exceptions=False)


def test_cli_nothing_to_ingest_exits_2_with_a_warning_and_no_store(store_settings: Any, tmp_path: Path) -> None:
    settings = store_settings()
    (tmp_path / "empty").mkdir()
    result = cli(settings, "ingest", str(tmp_path / "empty"), "--json")
    assert result.exit_code == 2
    assert "Warning: nothing to ingest: no supported file under" in result.stderr
    assert json.loads(result.stdout)["files"] == 0
    assert cli(settings, "status", "--json").stdout.count('"exists": false') == 1


def test_cli_prune_delete_by_jsonl_file_and_max_file_size(store_settings: Any, tmp_path: Path) -> None:
    settings = store_settings()
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "a.md").write_text("Alpha document about lighthouses.")
    (root / "b.md").write_text("Beta document about orchards.")
    (root / "big.txt").write_text("x " * 2000)
    (root / "records.jsonl").write_text('{"text": "first record"}\n{"text": "second record"}\n')
    first = cli(settings, "ingest", str(root), "--json", "--max-file-size", "1KB", "--no-progress")
    assert first.exit_code == 0, first.output
    report = json.loads(first.stdout)
    assert report["documents_new"] == 4
    assert [s["reason"] for s in report["skipped"]] == ["larger than --max-file-size (4,000 > 1,024 bytes)"]
    (root / "b.md").unlink()
    kept = cli(settings, "ingest", str(root), "--no-progress", "--max-file-size", "1KB")
    assert kept.exit_code == 0 and "1 indexed document(s) under the given paths are no longer there" in kept.output
    pruned = json.loads(cli(settings, "ingest", str(root), "--prune", "--json", "--max-file-size", "1KB").stdout)
    assert pruned["documents_removed"] == 1 and pruned["chunks_embedded"] == 0
    deleted = cli(settings, "delete", "--doc", str(root / "records.jsonl"))
    assert deleted.exit_code == 0 and "Deleted 2 chunk(s)" in deleted.output
    status = json.loads(cli(settings, "status", "--json").stdout)
    assert status["documents"] == 1
    bad = cli(settings, "ingest", str(root), "--max-file-size", "lots")
    assert bad.exit_code == 2 and "'lots' is not a size" in bad.output
