"""N-gram blocking and the repetition penalty over the answer's own tokens, on exact id sequences."""

from __future__ import annotations

import torch

from esrag.generators.repetition import RepetitionLogitsProcessor, banned_next, penalize


def test_banned_next_is_every_token_that_would_repeat_an_ngram() -> None:
    #        a  b  c  a  b  ->  "a b" was followed by c: c is banned (3-grams)
    assert banned_next([1, 2, 3, 1, 2], 3) == {3}
    assert banned_next([1, 2, 3, 1, 2, 4, 1, 2], 3) == {3, 4}
    assert banned_next([1, 2, 3, 1, 2], 4) == set()
    assert banned_next([1, 2, 3], 1) == set()  # n < 2: off


def test_ngrams_with_citation_tokens_are_never_banned() -> None:
    # ". [ 1 ]" after two sentences: "[" and "1" are exempt, so the same citation stays possible
    dot, open_, one, close = 5, 7, 9, 12
    ids = [20, dot, open_, one, close, 21, dot]
    assert banned_next(ids, 2, exempt={open_, one, close}) == set()
    assert banned_next([20, dot, 30, 21, dot], 2) == {30}


def test_penalize_divides_positive_logits_and_multiplies_negative_ones() -> None:
    assert penalize(2.0, 2.0) == 1.0
    assert penalize(-2.0, 2.0) == -4.0


def test_the_processor_counts_only_tokens_after_the_prompt() -> None:
    proc = RepetitionLogitsProcessor(prompt_len=3, ngram=2, penalty=2.0, exempt={0})
    ids = torch.tensor([[4, 5, 6, 1, 2, 1]])  # prompt 4 5 6; answer 1 2 1 -> "1 2" seen: 2 banned
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    out = proc(ids, scores.clone())[0]
    spared = RepetitionLogitsProcessor(prompt_len=3, ngram=0, penalty=2.0, unpenalized={1})(ids, scores.clone())[0]
    assert spared[1] == 1.0 and spared[2] == 0.5
    assert out[2] == torch.finfo(out.dtype).min
    assert out[1] == 0.5  # used in the answer: penalised
    assert out[4] == out[5] == out[6] == 1.0  # only in the prompt: free to quote
    assert out[0] == 1.0  # exempt
