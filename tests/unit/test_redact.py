"""Credentials are found in URLs by parsing, whatever the password contains, and masked in free text."""

from __future__ import annotations

import pytest

from esrag.redact import MASK, mask_secrets, redact_text, redact_url, split_credentials


@pytest.mark.parametrize("password", ["pa#ss", "p/a/ss", "pa?ss", "p@ss", "p:a:ss", "#/?@:", "s3cret"])
def test_a_password_with_url_delimiters_is_split_out_whole(password: str) -> None:
    parts = split_credentials(f"http://elastic:{password}@es.example:9200/base")
    assert parts == ("http://es.example:9200/base", "elastic", password)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://elastic:pa#ss@host:9200", ("http://host:9200", "elastic", "pa#ss")),
        ("https://u@[::1]:9200/", ("https://[::1]:9200/", "u", None)),
        ("http://u:p%40ss%23@h", ("http://h", "u", "p@ss#")),  # percent-encoded forms are decoded
        ("http://u:@h:1?x=1#f", ("http://h:1?x=1#f", "u", "")),
        ("http://host:9200/x?y=1#z", ("http://host:9200/x?y=1#z", None, None)),
        ("localhost:9200", ("localhost:9200", None, None)),  # no scheme: nothing to split
    ],
)
def test_split_credentials(url: str, expected: tuple[str, str | None, str | None]) -> None:
    assert split_credentials(url) == expected


def test_an_at_sign_in_a_path_errs_on_the_side_of_hiding() -> None:
    assert redact_url("http://host/a@b") == "http://b"


def test_redact_url_never_returns_the_password() -> None:
    url = "https://elastic:a#b/c?d@e:f@es.example:9243/x"
    assert redact_url(url) == "https://es.example:9243/x"
    assert "a#b" not in redact_url(url)


def test_mask_secrets_masks_plain_and_percent_encoded_forms() -> None:
    text = "failed for http://u:pa%23ss%2Fw0rd@h and key pa#ss/w0rd and other"
    assert mask_secrets(text, ["pa#ss/w0rd", None, ""]) == f"failed for http://u:{MASK}@h and key {MASK} and other"


def test_mask_secrets_masks_the_longer_of_overlapping_secrets_whole() -> None:
    assert mask_secrets("x abcdefgh y", ["abcd", "abcdefgh"]) == f"x {MASK} y"


def test_very_short_secrets_are_not_masked_in_text() -> None:
    assert mask_secrets("a b c", ["a"]) == "a b c"


@pytest.mark.parametrize("password", ["pa/ss", "pa#ss", "pa?ss", "pa@ss", "pa:ss", "p/a#s?s@w:d"])
def test_free_text_loses_url_credentials_whatever_the_password_holds(password: str) -> None:
    text = f"Elasticsearch at http://elastic:{password}@es.internal:9200/_bulk failed (see http://a@b)."
    assert redact_text(text) == "Elasticsearch at http://***@es.internal:9200/_bulk failed (see http://***@b)."
