"""Citation-constrained decoding: the rules on a hand-built vocabulary, and the processor driving a
deterministic toy "model" (fixed logits, greedy) through whole answers."""

from __future__ import annotations

import math

import pytest
import torch

from esrag.answering.rag import parse_citations
from esrag.generators.citations import CitationLogitsProcessor, CitationRules

VOCAB = ["<eos>", " The", " sky", " is", " blue", ".", "!", " [", "[", "1", "2", "3", "]", "].", " and",
         " 3", " e", " x", "\n", ").", " grass", " green", ".\n", "jsonl", "g", " corpus"]
EOS = 0
ID = {t: i for i, t in enumerate(VOCAB)}


def rules() -> CitationRules:
    return CitationRules(VOCAB, [EOS])


def decode(ids: list[int]) -> str:
    return "".join(VOCAB[i] for i in ids if i != EOS)


def test_token_classes() -> None:
    r = rules()
    assert (r.open_bare, r.open_spaced, r.close) == (ID["["], ID[" ["], ID["]"])
    assert sorted(r.digit_ids.values()) == ["1", "2", "3"]
    assert {VOCAB[i] for i in r.space_ids} == {t for t in VOCAB if t[0] in " \n"}
    assert r.end_and_space == {ID["."]: [ID[".\n"]]}
    assert r.open_id(" The sky") == ID[" ["]
    assert r.open_id("") == r.open_id("blue\n") == r.open_id(" blue.") == ID["["]


@pytest.mark.parametrize(("text", "needs"), [
    ("", False),
    (" The sky is blue", True),
    (" The sky is blue [1]", False),
    (" The sky is blue.[1]", False),
    (" The sky is blue.[1] The grass", True),
    (" The sky is blue [1]. The grass", True),
    (" The sky is blue [2, 3]. ", False),
    (" The sky is blue. ", False),
    ("line one\n", False),
    (" The [a] sky", True),  # not a citation
])
def test_sentence_needs_citation(text: str, needs: bool) -> None:
    assert CitationRules.sentence_needs_citation(text) is needs


@pytest.mark.parametrize(("text", "ended"), [
    (" The sky is blue.", True),
    (" The sky is blue!", True),
    (' He said "blue."', True),
    (" The sky is blue", False),
    (" The sky is blue [1].", False),  # cited already
    (" Step 1.", False),  # a list marker or a number
    (" scored by BM25.", True),
    (" e.", False),  # an abbreviation: "e.g."
    (" e.g.", False),
    (" corpus.", True),  # the next token decides: "jsonl" continues, " The" ends
])
def test_ended_uncited(text: str, ended: bool) -> None:
    assert CitationRules.ended_uncited(text) is ended


def test_inside_allows_only_valid_source_numbers() -> None:
    r = rules()
    assert r.inside(" The sky", 3) is None
    assert r.inside(" The sky [", 3) == ([ID["1"], ID["2"], ID["3"]], False)
    assert r.inside(" The sky [", 2) == ([ID["1"], ID["2"]], False)
    assert r.inside(" The sky [2", 2) == ([], True)
    assert r.inside(" The sky [1", 12) == ([ID["1"], ID["2"]], True)  # [1], [11], [12]


def toy_logits(preferences: list[str]) -> torch.Tensor:
    """Logits ranking the given tokens first (in that order), everything else far below."""
    scores = torch.full((len(VOCAB),), -10.0)
    for rank, token in enumerate(preferences):
        scores[ID[token]] = 5.0 - rank
    return scores


def run(script: list[list[str]], n_sources: int, max_new_tokens: int = 40,
        passages: list[str] | None = None) -> str:
    """Greedy decoding where step i's logits prefer ``script[i]`` (the last entry repeats)."""
    proc = CitationLogitsProcessor(rules(), n_sources, prompt_len=2, max_new_tokens=max_new_tokens, decode=decode,
                                   passages=passages)
    ids = [ID[" The"], ID[" The"]]  # the "prompt"
    for step in range(max_new_tokens):
        scores = toy_logits(script[min(step, len(script) - 1)]).unsqueeze(0)
        token = int(proc(torch.tensor([ids]), scores)[0].argmax())
        ids.append(token)
        if token == EOS:
            break
    return decode(ids[2:])


def test_the_citation_follows_the_sentence_end_and_the_model_chooses_the_source() -> None:
    # the model wants " sky is blue." then " grass green." then stop; among numbers it prefers 2, then 1
    text = run([[" sky"], [" is"], [" blue"], ["."], [" grass", "2"], ["2", "1"], ["]"],
                [" grass"], [" green"], ["."], ["<eos>", "1", "3"], ["1"], ["]"], ["<eos>"]], 3)
    assert text == " sky is blue.[2] grass green.[1]"
    assert parse_citations(text, 3) == ([2, 1], [])


def test_a_dot_inside_a_word_is_not_a_sentence_end() -> None:
    text = run([[" corpus"], ["."], ["jsonl"], ["."], ["\n", "1"], ["1"], ["]"], ["<eos>"]], 2)
    assert text == " corpus.jsonl.[1]"


def test_a_token_with_the_end_and_a_newline_is_split_to_place_the_citation() -> None:
    text = run([[" sky"], [".\n"], ["\n", "2"], ["2"], ["]"], ["<eos>"]], 2)
    assert text == " sky.[2]"


def test_end_of_text_mid_sentence_opens_a_citation() -> None:
    text = run([[" sky"], [" blue"], ["<eos>", "3"], ["3"], ["]"], ["<eos>"]], 3)
    assert text == " sky blue [3]"


def test_numbers_outside_the_sources_are_impossible() -> None:
    text = run([[" sky"], ["."], [" The"], ["3", "2"], ["]"], ["<eos>"]], 2)  # prefers 3, only 2 sources
    assert text == " sky.[2]"


def test_a_citation_the_model_writes_itself_is_kept_and_suffices() -> None:
    text = run([[" sky"], [" ["], ["1"], ["]"], ["."], [" grass"], ["!"], ["<eos>", "2"], ["2"], ["]"],
                ["<eos>"]], 2)
    assert text == " sky [1]. grass![2]"
    assert parse_citations(text, 2) == ([1, 2], [])


def test_a_bracket_the_model_opens_itself_is_not_restricted() -> None:
    text = run([[" sky"], ["["], [" x"], ["]"], [" blue"], ["."], ["<eos>"], ["1"], ["]"], ["<eos>"]], 2)
    assert text == " sky[ x] blue.[1]"


def test_list_markers_and_abbreviations_are_left_alone() -> None:
    text = run([[" 3"], ["."], [" e"], ["."], ["g"], ["."], [" sky"], ["."], ["<eos>", "1"], ["1"], ["]"],
                ["<eos>"]], 2)
    assert text == " 3. e.g. sky.[1]"


def test_an_answer_running_out_of_tokens_is_cited_before_the_end() -> None:
    text = run([[" sky", " blue"]], 3, max_new_tokens=8)
    assert text == " sky sky sky sky sky [1]"  # the model's top number among 1..3 (all equal: the first)


def test_sampling_mass_of_the_next_word_moves_to_the_citation() -> None:
    """With sampling: after "blue.", what the model gives to continuing with a new word or to stopping
    becomes the probability of citing; continuing the word ("jsonl") keeps its own."""
    proc = CitationLogitsProcessor(rules(), 3, prompt_len=0, max_new_tokens=40, decode=decode)
    scores = torch.log(torch.full((len(VOCAB),), 1e-12))
    for token, p in ((" The", 0.3), ("\n", 0.1), ("<eos>", 0.2), ("jsonl", 0.4)):
        scores[ID[token]] = math.log(p)
    out = proc(torch.tensor([[ID[" sky"], ID["."]]]), scores.unsqueeze(0))[0]
    probs = torch.softmax(out, dim=0)
    assert probs[ID["["]] == pytest.approx(0.6, abs=1e-4)
    assert probs[ID["jsonl"]] == pytest.approx(0.4, abs=1e-4)
    assert probs[ID[" The"]] == probs[EOS] == 0


def test_no_sources_means_no_constraint() -> None:
    proc = CitationLogitsProcessor(rules(), 0, prompt_len=0, max_new_tokens=40, decode=decode)
    scores = toy_logits(["<eos>"]).unsqueeze(0)
    assert torch.equal(proc(torch.tensor([[ID[" sky"]]]), scores.clone()), scores)


def test_a_vocabulary_without_brackets_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\["):
        CitationRules(["a", "b", "1", "]"], [0])


def test_with_passages_only_a_supporting_passage_can_be_cited() -> None:
    # the model prefers source 1, but only passage 2 says the sky is blue
    passages = ["Grass is green in spring.", "The sky is blue by day."]
    text = run([[" sky"], [" is"], [" blue"], ["."], [" grass", "1", "2"], ["1", "2"], ["]"], ["<eos>"]], 2,
               passages=passages)
    assert text == " sky is blue.[2]"


def test_with_passages_a_sentence_no_passage_supports_is_left_uncited() -> None:
    passages = ["Grass is green in spring.", "Rust has no garbage collector."]
    text = run([[" sky"], [" is"], [" blue"], ["."], ["<eos>", "1"], ["<eos>"]], 2, passages=passages)
    assert text == " sky is blue."
    assert parse_citations(text, 2) == ([], [])


def test_inside_with_numbers_allows_only_those() -> None:
    r = rules()
    assert r.inside(" The sky [", 3, [2]) == ([ID["2"]], False)
    assert r.inside(" The sky [2", 3, [2]) == ([], True)
    assert r.inside(" The sky [1", 3, [2]) == ([], False)
