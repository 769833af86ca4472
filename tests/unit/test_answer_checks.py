"""The pure answer checks: sentences and citations, the loop detector and the support score, on exact
hand-worked texts."""

from __future__ import annotations

import pytest

from esrag.answering.checks import (
    Sentence,
    check_sentence,
    content_words,
    find_loop,
    identifiers,
    repeated_sentences,
    split_sentences,
    support,
    supporters,
)

PRIVILEGES = ("esrag needs, on its indices, the privileges `create_index`, `manage` (for aliases), `read`, "
              "`write` and `delete`.")


def test_split_sentences_keeps_each_citation_with_its_sentence() -> None:
    text = "esrag needs read.[1] It writes too [2]. Then\nA line"
    assert split_sentences(text) == [
        Sentence(0, 20, "esrag needs read.", (1,)),
        Sentence(21, 39, "It writes too .", (2,)),
        Sentence(40, 45, "Then", ()),  # the line break ends it
        Sentence(45, 51, "A line", ()),
    ]


def test_split_sentences_does_not_cut_file_names_or_versions() -> None:
    assert [s.text for s in split_sentences("Edit esrag.toml and use 3.12. Done.")] == [
        "Edit esrag.toml and use 3.12.", "Done."]


@pytest.mark.parametrize(("text", "cut"), [
    ("The answer is: The answer is: The answer is: The", 15),  # after the first copy
    ("Intro. Use it now.[1] Use it now.[2] More", 22),  # a repeated sentence, citations ignored
    ("Run esrag ingest docs. Then run esrag ask.", None),
    ("very very good", None),  # under LOOP_MIN_WORDS
    ("a b a b a b", 4),
    ("Yes. Yes. No", None),  # one-word sentences never count
    ("id sql_2023 -1" + "0" * 40, 15),  # one character, over and over, inside a word
    ("a rule: " + "-" * 20, None),
])
def test_find_loop(text: str, cut: int | None) -> None:
    assert find_loop(text) == cut


def test_a_sentence_still_being_written_is_not_a_repeat_yet() -> None:
    assert find_loop("Use it now. Use it now") is None  # may still become "Use it now and then."
    assert find_loop("Use it now. Use it now. ") == 12


def test_repeated_sentences_counts_repeats_after_the_first() -> None:
    assert repeated_sentences("A b c.[1] A b c.[2] a B c! D e.") == 2
    assert repeated_sentences("```bash\nx y\n```bash\nz w") == 0  # one-word lines do not count
    assert repeated_sentences("") == 0


def test_content_words_drop_stopwords_citations_and_single_digits() -> None:
    assert content_words("The index is created by esrag [2] in 3 steps.") == ["index", "creat", "esrag", "step"]


def test_identifiers_are_backticked_flags_and_dotted_or_underscored_words() -> None:
    assert identifiers("Set `ESRAG_ES_URL` or --es-url in esrag.toml for BM25 on port 9200.") == [
        "esrag_es_url", "--es-url", "esrag.toml", "bm25"]


def test_an_invented_identifier_is_never_supported() -> None:
    s = support("The `es_test_crc` is required to verify the Elasticsearch index.[5]", PRIVILEGES)
    assert s.missing == ("es_test_crc",)
    assert s.score == 0.0 and not s.supported()


def test_a_faithful_sentence_is_supported_and_scores_its_word_share() -> None:
    s = support("esrag needs the create_index and manage privileges.", PRIVILEGES)
    assert (s.score, s.lexical, s.missing) == (1.0, 1.0, ())
    half = support("esrag needs shards and replicas.", PRIVILEGES)  # esrag, need found; shard, replica not
    assert half.lexical == 0.5 and half.supported(0.5) and not half.supported(0.6)


def test_a_cosine_can_vouch_for_a_paraphrase_but_never_lowers_a_literal_match() -> None:
    para = support("The tool requires shards.", PRIVILEGES, cosine=0.9)  # lexical 0: tool, requir, shard
    assert para.lexical == 0.0 and para.score == pytest.approx(0.45)
    assert support("esrag needs the read privilege.", PRIVILEGES, cosine=0.1).score == 1.0


def test_a_sentence_claiming_nothing_scores_one() -> None:
    assert support("It is so.", PRIVILEGES).score == 1.0


def test_supporters_are_the_passages_over_the_threshold_best_first() -> None:
    passages = ["Grass is green.", "The sky is blue and wide.", "The sky is blue."]
    assert supporters("The sky is blue.", passages) == [2, 3]
    assert supporters("Rust is fast.", passages) == []


def test_check_sentence_uses_the_cited_passages_or_all_when_uncited() -> None:
    passages = ["Grass is green.", "The sky is blue."]
    cited_wrong = check_sentence(Sentence(0, 1, "The sky is blue.", (1,)), passages)
    assert (cited_wrong.source, cited_wrong.supported, cited_wrong.score) == (1, False, 0.0)
    uncited = check_sentence(Sentence(0, 1, "The sky is blue.", ()), passages)
    assert (uncited.cites, uncited.source, uncited.supported) == ((), 2, True)
    out_of_range = check_sentence(Sentence(0, 1, "The sky is blue.", (7,)), passages)
    assert (out_of_range.cites, out_of_range.source) == ((), 2)
    assert check_sentence(Sentence(0, 1, "x y", ()), []).supported is False
