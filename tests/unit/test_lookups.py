"""Which queries are exact lookups (esrag.retrieval.search.is_lookup): they run at the lookup_alpha setting."""

from __future__ import annotations

import pytest

from esrag.retrieval.search import is_lookup


@pytest.mark.parametrize("query", [
    "E1234", "PyErr_SetString", "os.path.join", "utf-8", "std::vector", "__init__", "sys.maxsize",
    "ERR-4821", "v2", "docs/api.md", "  kx_flush_queue  ", '"rotate the keys"', '"x"',
])
def test_identifiers_and_quoted_phrases_are_lookups(query: str) -> None:
    assert is_lookup(query)


@pytest.mark.parametrize("query", [
    "", " ", "tomatoes", "How do I rotate the keys?", "3.11", "2024-01-01", "42", "rotate keys",
    "os.path.join and os.path.split", '"unbalanced', '""', '" "', '"a" or "b"', "utf-8?", "-", "a..b",
])
def test_words_questions_numbers_and_broken_quotes_are_not(query: str) -> None:
    assert not is_lookup(query)
