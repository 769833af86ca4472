"""The evaluation-set builders in scripts/: section splitting, question extraction, and keeping each question
out of the document judged to answer it. Small inline samples; no package is downloaded."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _load(name: str) -> ModuleType:
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


evalset = _load("_evalset")
pyfaq = _load("build_python_faq")
debfaq = _load("build_debian_faq")
gcide = _load("build_gcide_corpus")
gitdoc = _load("build_git_doc")

ANSWER = " ".join(f"word{i}" for i in range(25))  # 25 words: over the 20-word floor


# -- python-faq (reStructuredText) ------------------------------------------------------------------------


def test_rst_sections_split_at_every_underlined_heading_with_preamble_as_zero() -> None:
    src = ".. highlight:: c\n\nIntro text.\n\nFirst\n=====\n\nBody one.\n\nSecond\n------\nBody two.\n"
    got = [(s.index, s.title, s.text) for s in pyfaq.split_sections(src)]
    assert got == [(0, "", ".. highlight:: c\n\nIntro text."), (1, "First", "Body one."), (2, "Second", "Body two.")]


def test_rst_page_that_starts_with_its_title_numbers_that_title_zero() -> None:
    got = [(s.index, s.title) for s in pyfaq.split_sections("Title\n=====\n\ntext\n\nNext\n----\n\nmore\n")]
    assert got == [(0, "Title"), (1, "Next")]


def test_rst_short_underline_indented_text_and_gt_adornment_are_not_headings() -> None:
    src = "Too long title\n=====\n\n  Indented\n  --------\n\nArrows\n>>>>>>\n\nReal\n====\nend\n"
    sections = pyfaq.split_sections(src)
    assert [s.title for s in sections] == ["", "Real"]
    assert "Arrows\n>>>>>>" in sections[0].text and "Too long title\n=====" in sections[0].text


def test_rst_overline_stays_at_the_end_of_the_section_before() -> None:
    src = "A\n-\n\ntext a\n\n-------\nB title\n-------\n\ntext b\n"
    sections = pyfaq.split_sections(src)
    assert [(s.title, s.text) for s in sections] == [("A", "text a\n\n-------"), ("B title", "text b")]


def test_rst_faq_questions_are_judged_to_their_section_whose_title_is_the_page() -> None:
    src = (
        "Design FAQ\n==========\n\n.. contents::\n\n"
        f"Why is it so?\n-------------\n\n{ANSWER}\n\n"
        "Why short?\n----------\n\nSee the next question.\n\n"
        f"Not a question\n--------------\n\n{ANSWER}\n"
    )
    docs, questions = pyfaq.page_docs("faq/design", src)
    assert [(d.id, d.title) for d in docs] == [("faq/design#1", "faq/design"), ("faq/design#3", "Not a question")]
    assert questions == [("Why is it so?", "faq/design#1")]  # the short answer is left out with its question
    assert all("Why is it so?" not in d.title + d.text for d in docs)


def test_rst_questions_outside_faq_pages_are_not_queries_and_keep_their_heading() -> None:
    docs, questions = pyfaq.page_docs("library/os", f"What is os?\n===========\n\n{ANSWER}\n")
    assert questions == [] and [d.title for d in docs] == ["What is os?"]


# -- debian-faq (DocBook HTML) ----------------------------------------------------------------------------

DEB_PAGE = f"""<html><head><title>Chapter 3. Choosing</title><style>p {{}}</style></head><body>
<div class="navheader"><table><tr><th>Chapter 3. Choosing</th></tr></table></div>
<div class="chapter"><div class="titlepage"><h1 class="title"><a id="choosing"></a>Chapter 3. Choosing</h1></div>
<div class="toc"><dl><dt><a href="#s3.1">3.1. Which one is better for me?</a></dt></dl></div>
<div class="section"><div class="titlepage"><h2 class="title"><a id="s3.1"></a>3.1. Which one is better
 for me?</h2></div><p>{ANSWER}
 see <a class="xref" href="x.html#s1" title="1.1. What is this FAQ?">Section 1.1, \u201cWhat is this FAQ?\u201d</a>.</p>
<div class="itemizedlist"><ul><li><p>first item</p></li></ul></div>
<pre>  apt   install  x</pre>
<div class="section"><div class="titlepage"><h3 class="title"><a id="s3.1.1"></a>3.1.1. Stable</h3></div>
<p>{ANSWER}</p></div></div></div>
<div class="navfooter"><p>Next: a question?</p></div></body></html>"""


def test_debian_sections_skip_navigation_and_toc_and_keep_pre_and_list_items() -> None:
    sections = debfaq.split_sections(DEB_PAGE)
    assert [(s.anchor, s.heading) for s in sections] == [
        ("", ""),
        ("choosing", "Chapter 3. Choosing"),
        ("s3.1", "3.1. Which one is better for me?"),
        ("s3.1.1", "3.1.1. Stable"),
    ]
    assert sections[0].text == "" and sections[1].text == ""  # navigation bar and table of contents dropped
    body = sections[2].text
    assert body.startswith("word0 ") and "* first item" in body and "  apt   install  x" in body
    assert "Next: a question?" not in sections[3].text


def test_debian_cross_reference_keeps_its_number_not_the_quoted_question() -> None:
    assert debfaq.drop_xref_quote("Section 12.1, \u201cWhat other documentation exists?\u201d") == "Section 12.1"
    assert debfaq.drop_xref_quote("the Debian web site") == "the Debian web site"
    body = debfaq.split_sections(DEB_PAGE)[2].text
    assert "see Section 1.1." in body and "What is this FAQ?" not in body


def test_debian_questions_lose_their_number_and_their_section_takes_the_chapter_title() -> None:
    assert debfaq.strip_number("3.1.10. I have a working Desktop?") == "I have a working Desktop?"
    assert debfaq.strip_number("Chapter 3. Choosing") == "Choosing"
    docs, questions = debfaq.page_docs("choosing", DEB_PAGE)
    assert [(d.id, d.title) for d in docs] == [("choosing#s3.1", "Choosing"), ("choosing#s3.1.1", "Stable")]
    assert questions == [("Which one is better for me?", "choosing#s3.1")]


def test_debian_chapter_pages_come_in_table_of_contents_order_once() -> None:
    index = (
        '<span class="chapter"><a href="b.en.html">1</a></span><span class="section"><a href="b.en.html#x">'
        '</a></span><span class="chapter"><a href="a.en.html">2</a></span><span class="appendix">'
        '<a href="b.en.html#y">3</a></span>'
    )
    assert debfaq.chapter_pages(index) == ["b.en.html", "a.en.html"]


# -- git-doc (AsciiDoc) -----------------------------------------------------------------------------------

GIT_PAGE = f"""git-add(1)
==========

NAME
----
git-add - Add file contents to the index

DESCRIPTION
-----------
[[desc]]
{ANSWER} as in <<how-to-x,the how-to>> and <<other>>.
+
--
kept
--

------------------------------------------------
Not a heading
-------------
------------------------------------------------

OPTIONS
-------
{ANSWER}
"""


def test_asciidoc_sections_split_at_underlined_headings_but_not_inside_blocks() -> None:
    sections = gitdoc.split_sections(GIT_PAGE)
    titles = [(s.index, s.title) for s in sections]
    assert titles == [(0, "git-add(1)"), (1, "NAME"), (2, "DESCRIPTION"), (3, "OPTIONS")]
    desc = sections[2].text
    assert "Not a heading\n-------------" in desc and "+\n--\nkept" in desc  # a list continuation is not a title


def test_asciidoc_one_line_headings_and_underline_length_rule() -> None:
    src = "== How to merge\ntext\n\nLonger title here\n---\nmore\n\nClose\n-----\nlast\n==== update script ====\nx\n"
    assert [s.title for s in gitdoc.split_sections(src)] == ["How to merge", "Close", "update script"]


def test_asciidoc_anchors_and_cross_reference_targets_are_dropped() -> None:
    assert gitdoc.clean_text("[[how-to-merge]]\nSee <<how-to-merge,merging>> and <<how-to-x>>.") == "See merging and ."


def test_asciidoc_purpose_is_judged_to_description_which_does_not_contain_it() -> None:
    sections = gitdoc.split_sections(GIT_PAGE)
    assert gitdoc.purpose(sections) == ("git-add", "Add file contents to the index")
    docs, asks = gitdoc.page_docs("git-add", GIT_PAGE)
    assert [(d.id, d.title) for d in docs] == [
        ("git-add#2", "git-add(1): DESCRIPTION"),
        ("git-add#3", "git-add(1): OPTIONS"),
    ]
    assert asks == [("Add file contents to the index", "git-add#2")]
    assert "Add file contents" not in docs[0].text


def test_gitfaq_questions_start_sections_judged_under_the_page_title() -> None:
    src = (
        "gitfaq(7)\n=========\n\nConfiguration\n-------------\n\n"
        f"[[user-name]]\nWhat should I put?::\n\t{ANSWER}\n+\nMore.\n"
    )
    sections = gitdoc.split_sections(src, faq_questions=True)
    assert [(s.title, s.kind) for s in sections][-1] == ("What should I put?", "question")
    docs, asks = gitdoc.page_docs("gitfaq", src)
    assert asks == [("What should I put?", docs[0].id)] and docs[0].title == "gitfaq(7)"
    assert "What should I put?" not in docs[0].text and "user-name" not in docs[0].text


def test_user_manual_how_to_headings_are_queries() -> None:
    assert gitdoc.is_how_to("How to get a Git repository") and gitdoc.is_how_to("What is a branch?")
    assert not gitdoc.is_how_to("Creating tags")
    src = f"= Git User Manual\n\n== How to merge\n\n{ANSWER}\n\n== Creating tags\n\n{ANSWER}\n"
    docs, asks = gitdoc.page_docs("user-manual", src)
    assert asks == [("How to merge", "user-manual#1")]
    assert [d.title for d in docs] == ["user-manual", "user-manual: Creating tags"]


def test_fragments_are_the_pages_another_page_includes() -> None:
    pages = {"git-diff": "include::diff-options.txt[]\n", "howto/a": "include::../urls.txt[]\n", "urls": ""}
    assert gitdoc.fragments(pages) == {"diff-options", "urls"}


# -- shared writing and checks ----------------------------------------------------------------------------


def test_check_set_refuses_a_question_inside_its_judged_document() -> None:
    docs = [evalset.Doc("d1", "faq", "Why is it so? Because.")]
    with pytest.raises(evalset.BuildError, match="appears verbatim in its judged document d1"):
        evalset.check_set(docs, [evalset.Query("q0", "why is it so?", "d1")])
    with pytest.raises(evalset.BuildError, match="judges d2, which is not in the corpus"):
        evalset.check_set(docs, [evalset.Query("q0", "Other?", "d2")])
    with pytest.raises(evalset.BuildError, match="duplicate corpus ids"):
        evalset.check_set(docs + docs, [])


def test_write_beir_writes_the_three_files_and_leaves_no_staging_dir(tmp_path: Path) -> None:
    docs = [evalset.Doc("d1", "T", "caf\u00e9 text"), evalset.Doc("d2", "U", "other")]
    queries = [evalset.Query("q0", "Where?", "d2")]
    evalset.write_beir(tmp_path, docs, queries)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "corpus.jsonl", "qrels", "qrels/test.tsv", "queries.jsonl"
    ]
    lines = (tmp_path / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x) for x in lines] == [{"_id": "d1", "title": "T", "text": "caf\u00e9 text"},
                                              {"_id": "d2", "title": "U", "text": "other"}]
    assert (tmp_path / "qrels" / "test.tsv").read_text() == "query-id\tcorpus-id\tscore\nq0\td2\t1\n"
    assert "2 sections" in evalset.summary(tmp_path, docs, queries, "x") and "1 queries" in evalset.summary(
        tmp_path, docs, queries, "x"
    )


def test_write_beir_writes_nothing_when_the_set_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(evalset.BuildError):
        evalset.write_beir(tmp_path / "out", [evalset.Doc("d", "t", "x")], [evalset.Query("q", "x", "d")])
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------- gcide corpus


def test_dictd_numbers_and_entries() -> None:
    assert [gcide.dictd_number(t) for t in ("A", "B", "BA", "/", "BAA")] == [0, 1, 64, 63, 4096]
    data = b"first block\nsecond block\n"
    index = "00-database-info\tA\tC\nalpha\tA\tL\nAlpha\tA\tL\nbeta\tM\tN\n"
    assert gcide.entries(index, data) == [("alpha", "first block"), ("beta", "second block")]
