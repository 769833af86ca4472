"""Contextual chunk text: the embed template, document outlines, and chunking within the token budget."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esrag.config import Settings
from esrag.errors import ConfigError
from esrag.ingest.chunking import Chunker, chunk_document
from esrag.ingest.context import DEFAULT_TEMPLATE, PLAIN, TITLE_AND_HEADINGS, ContextTemplate, check_template, sections
from esrag.sources.text_formats import OutlineState, html_document, markdown_outline, part_outline, rst_outline
from esrag.types import Document, Heading, sha256_hex


def words(texts: Sequence[str]) -> list[int]:
    return [len(t.split()) for t in texts]


# ------------------------------------------------------------------------------------------- template


def test_prefix_drops_the_lines_of_empty_fields() -> None:
    t = ContextTemplate(TITLE_AND_HEADINGS)
    assert t.prefix("Guide", ["Setup", "Connecting"]) == "Guide\nSetup > Connecting\n\n"
    assert t.prefix("Guide", []) == "Guide\n\n"
    assert t.prefix("", ["Setup"]) == "Setup\n\n"
    assert t.prefix("", []) == ""
    assert t.prefix("  A\n  title ", ["x\ty"]) == "A title\nx y\n\n"  # whitespace collapsed: one line each


def test_custom_templates_and_plain() -> None:
    t = ContextTemplate("Document: {title}. Section: {headings}.\n{text}")
    assert t.prefix("Guide", ["Setup"]) == "Document: Guide. Section: Setup.\n"
    assert ContextTemplate(PLAIN).plain and ContextTemplate(PLAIN).prefix("Guide", ["x"]) == ""
    assert not ContextTemplate("{title}: {text}").uses_headings
    assert ContextTemplate(TITLE_AND_HEADINGS).signature != ContextTemplate("{title}: {text}").signature
    assert ContextTemplate().template == DEFAULT_TEMPLATE == "{headings}\n\n{text}"
    default = ContextTemplate()
    assert default.prefix("Guide", ["Setup"]) == "Setup\n\n" and default.prefix("Guide", []) == ""


@pytest.mark.parametrize(("template", "problem"), [
    ("{title}", "must end with {text}"),
    ("{text} ({title})", "must end with {text}"),
    ("{text}{text}", "name it once"),
    ("{author}\n{text}", "unknown field {author}"),
    ("{title!r}\n{text}", "unknown field {title}"),
    ("{title\n{text}", "invalid embed_template"),
])
def test_bad_templates_are_named(template: str, problem: str) -> None:
    with pytest.raises(ConfigError, match="embed_template") as e:
        check_template(template)
    assert problem in str(e.value)


def test_settings_validate_the_template_and_read_backslash_n_as_a_newline() -> None:
    assert Settings(embed_template="{title}\\n{text}").embed_template == "{title}\n{text}"
    with pytest.raises(ConfigError, match="embed_template"):
        Settings(embed_template="{title}")


# ------------------------------------------------------------------------------------------- outlines


def test_markdown_outline_levels_offsets_and_fences() -> None:
    text = "# Guide\n\nintro\n\n## Setup\n\n```\n# not a heading\n```\n\nSub part\n--------\n\n### Deep ##\n"
    outline = markdown_outline(text)
    assert outline == (Heading(0, 1, "Guide"), Heading(text.index("## Setup"), 2, "Setup"),
                       Heading(text.index("Sub part"), 2, "Sub part"), Heading(text.index("### Deep"), 3, "Deep"))


def test_rst_outline_assigns_levels_in_order_of_first_use() -> None:
    text = "=====\nTitle\n=====\n\nSection\n-------\n\ntext\n\nSub\n~~~\n\nOther\n-----\n"
    assert rst_outline(text) == (Heading(0, 1, "Title"), Heading(text.index("Section"), 2, "Section"),
                                 Heading(text.index("Sub\n"), 3, "Sub"), Heading(text.index("Other"), 2, "Other"))


def test_part_outlines_carry_open_headings_and_code_fences_and_have_no_front_matter() -> None:
    parts = ["# Guide\n\n## Setup\n\n```\n# a comment\n\n", "# still code\n```\n\n### Deep\n\nbody\n",
             "---\nnot: front matter\n---\n\n## Usage\n\ntext\n"]
    first, state = part_outline(parts[0], "md", None)
    assert first == markdown_outline(parts[0]) == (Heading(0, 1, "Guide"), Heading(9, 2, "Setup"))
    assert state == OutlineState(((1, "Guide"), (2, "Setup")), in_fence=True)
    second, state = part_outline(parts[1], "md", state)
    deep = parts[1].index("### Deep")
    assert second == (Heading(0, 1, "Guide"), Heading(0, 2, "Setup"), Heading(deep, 3, "Deep"))
    third, state = part_outline(parts[2], "md", state)
    usage = parts[2].index("## Usage")
    assert third == (Heading(0, 1, "Guide"), Heading(0, 2, "Setup"), Heading(0, 3, "Deep"), Heading(usage, 2, "Usage"))
    assert state == OutlineState(((1, "Guide"), (2, "Usage")))
    doc = Document("d", "d", parts[1], title="Guide", outline=second)
    assert [path for _, _, path in sections(doc, doc.title)] == [("Setup",), ("Setup", "Deep")]


def test_rst_part_outlines_number_levels_as_the_whole_document_does() -> None:
    parts = ["Title\n=====\n\nSection\n-------\n\n", "Sub\n~~~\n\nOther\n-----\n"]
    _, state = part_outline(parts[0], "rst", None)
    second, state = part_outline(parts[1], "rst", state)
    assert second == (Heading(0, 1, "Title"), Heading(0, 2, "Section"), Heading(0, 3, "Sub"),
                      Heading(parts[1].index("Other"), 2, "Other"))
    assert state.open == ((1, "Title"), (2, "Other"))
    assert rst_outline(parts[1])[0] == Heading(0, 1, "Sub")  # alone, its first style would be level 1


def test_html_outline_points_at_the_headings_in_the_extracted_text() -> None:
    text, title, outline = html_document(
        "<title>Page</title><h1>Top</h1><p>a</p><h2>Second <em>part</em></h2><p>b</p><script><h2>x</h2></script>")
    assert title == "Page"
    assert [(h.level, h.text) for h in outline] == [(1, "Top"), (2, "Second part")]
    assert all(text[h.start:].startswith(h.text) for h in outline)


def test_sections_follow_the_heading_stack_and_skip_a_top_heading_equal_to_the_title() -> None:
    text = "pre\n# Guide\nA\n## Setup\nB\n### Connecting\nC\n## Usage\nD\n"
    doc = Document("d", "d", text, title="Guide", outline=markdown_outline(text))
    got = [(text[s:e].split("\n")[0], path) for s, e, path in sections(doc, doc.title)]
    assert got == [("pre", ()), ("# Guide", ()), ("## Setup", ("Setup",)),
                   ("### Connecting", ("Setup", "Connecting")), ("## Usage", ("Usage",))]


# ------------------------------------------------------------------------------------------- chunking


def test_contextual_chunks_keep_the_stored_text_and_embed_the_context() -> None:
    text = "# Guide\n\nintro words here\n\n## Connecting\n\nset es_url to the cluster address\n"
    doc = Document("d", "d", text, title="Guide", outline=markdown_outline(text))
    chunker = Chunker(words, chunk_size=50, chunk_overlap=5)
    chunks = chunk_document(doc, chunker, template=ContextTemplate(TITLE_AND_HEADINGS))
    assert [c.text for c in chunks] == ["# Guide\n\nintro words here",
                                        "## Connecting\n\nset es_url to the cluster address"]
    assert [c.context for c in chunks] == ["Guide\n\n", "Guide\nConnecting\n\n"]
    assert chunks[1].embed_text == "Guide\nConnecting\n\n## Connecting\n\nset es_url to the cluster address"
    assert all(c.chunk_sha == sha256_hex(c.embed_text) for c in chunks)
    assert all(text[c.start:c.end] == c.text for c in chunks)


def test_each_chunk_records_where_its_section_starts() -> None:
    body = " ".join(f"w{i}" for i in range(60))
    text = f"# Guide\n\nintro\n\n## Long\n\n{body}\n\n## Short\n\nend words\n"
    doc = Document("d", "d", text, title="Guide", outline=markdown_outline(text))
    chunker = Chunker(words, chunk_size=25, chunk_overlap=0)
    chunks = chunk_document(doc, chunker, template=ContextTemplate(DEFAULT_TEMPLATE))
    firsts = [c.text.split("\n")[0] for c in chunks]
    long_at, short_at = firsts.index("## Long"), firsts.index("## Short")
    assert short_at - long_at > 1  # the long section has several chunks
    assert [c.section for c in chunks] == [0] * long_at + [long_at] * (short_at - long_at) + [short_at]
    # without the heading template a chunk may straddle sections: it counts in the one it starts in
    plain = chunk_document(doc, chunker, template=ContextTemplate(PLAIN))
    parts = [s for s, _, _ in sections(doc)]
    for c in plain:
        part = max(i for i, s in enumerate(parts) if s <= c.start)
        assert plain[c.section].start >= parts[part] and (c.section == 0 or plain[c.section - 1].start < parts[part])
    # a document without headings is one section
    flat = Document("f", "f", body)
    assert {c.section for c in chunk_document(flat, chunker, template=ContextTemplate(DEFAULT_TEMPLATE))} == {0}


def test_the_plain_template_chunks_as_without_context() -> None:
    text = "# Guide\n\n" + " ".join(f"w{i}" for i in range(300))
    doc = Document("d", "d", text, title="Guide", outline=markdown_outline(text))
    chunker = Chunker(words, chunk_size=40, chunk_overlap=5)
    assert chunk_document(doc, chunker, template=ContextTemplate(PLAIN)) == chunk_document(doc, chunker)


def test_a_title_only_template_does_not_split_at_headings() -> None:
    text = "# A\nx\n# B\ny\n"
    doc = Document("d", "d", text, title="T", outline=markdown_outline(text))
    chunker = Chunker(words, chunk_size=50, chunk_overlap=5)
    chunks = chunk_document(doc, chunker, template=ContextTemplate("{title}: {text}"))
    assert [(c.context, c.text) for c in chunks] == [("T: ", "# A\nx\n# B\ny")]


def test_an_overlong_context_is_shortened_to_half_the_size() -> None:
    text = "# " + " ".join(["long"] * 30) + "\n\nbody text\n\n## Short\n\nmore body\n"
    doc = Document("d", "d", text, title=" ".join(["title"] * 30), outline=markdown_outline(text))
    chunker = Chunker(words, chunk_size=20, chunk_overlap=2)
    chunks = chunk_document(doc, chunker, template=ContextTemplate(TITLE_AND_HEADINGS))
    assert all(words([c.context])[0] + 1 <= 10 for c in chunks)
    assert chunks[-1].context == "Short\n\n"  # the deepest heading alone, when title + heading do not fit


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(title=st.text(" ab", max_size=40), body=st.lists(st.sampled_from(["word", "# H1", "## H2", "\n", "\n\n", "x y"]),
                                                       max_size=200), size=st.integers(4, 40))
def test_no_embedded_text_exceeds_the_chunk_size(title: str, body: list[str], size: int) -> None:
    text = " ".join(body)
    doc = Document("d", "d", text, title=title, outline=markdown_outline(text))
    chunker = Chunker(words, chunk_size=size, chunk_overlap=min(3, size - 1))
    chunks = chunk_document(doc, chunker, template=ContextTemplate(TITLE_AND_HEADINGS))
    for c in chunks:
        assert words([c.embed_text])[0] <= size
        assert text[c.start:c.end] == c.text
    covered = {i for c in chunks for i in range(c.start, c.end)}
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())
