"""The API's pure rules: API key parsing and constant-time lookup, error -> status mapping, redaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from esrag.api.auth import ApiKeys, Scope, bearer_token, is_loopback, load_keys
from esrag.api.problems import field_errors, status_for
from esrag.errors import (
    BulkWriteError,
    ConfigError,
    EsragError,
    GeneratorError,
    IndexNotFoundError,
    ModelMismatchError,
    StoreConnectionError,
    StoreError,
)
from esrag.redact import redact_text as redact

R, W = "r" * 20, "w" * 20


def test_keys_from_the_environment_and_a_file_with_their_scopes(tmp_path: Path) -> None:
    f = tmp_path / "keys"
    f.write_text(f"# team keys\nrw:{W}\n\n{'b' * 16}  # bare: read-only\n")
    keys = load_keys({"ESRAG_API_KEYS": f" ro:{R} , "}, key_file=f)
    assert keys.enabled
    assert (keys.scope_of(R), keys.scope_of(W), keys.scope_of("b" * 16)) == (Scope.READ, Scope.WRITE, Scope.READ)
    assert keys.scope_of("x" * 20) is None and keys.scope_of("") is None
    assert not load_keys({}).enabled


@pytest.mark.parametrize(("entries", "message"), [
    ("short", "ESRAG_API_KEYS: an API key must be at least 16"),
    (f"rw:{'a' * 8}", "at least 16"),
    (f"RW:{W}", "unknown key prefix 'RW:': write it in lower case, rw:KEY"),
    (f"Ro:{W}", "unknown key prefix 'Ro:'"),
    (f"admin:{W}", "ESRAG_API_KEYS: an entry has an unknown prefix"),
    (f"{W}:{R}", "unknown prefix"),
    (f"rw:{W}:{R}", "may not contain ':'"),
])
def test_bad_keys_are_config_errors_naming_where(entries: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        load_keys({"ESRAG_API_KEYS": entries})
    assert W not in str(e.value) and R not in str(e.value)


def test_a_key_file_that_is_missing_or_empty_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the API key file"):
        load_keys({}, key_file=tmp_path / "nope")
    (tmp_path / "empty").write_text("# none\n")
    with pytest.raises(ConfigError, match="holds no key"):
        load_keys({}, key_file=tmp_path / "empty")


def test_the_key_repr_holds_no_plain_key() -> None:
    keys = ApiKeys.parse([(f"rw:{W}", "test")])
    assert W not in repr(keys.digests)


def test_bearer_tokens_and_loopback_hosts() -> None:
    assert bearer_token(f"Bearer {R}") == R and bearer_token(f"bearer  {R} ") == R
    assert bearer_token(f"Basic {R}") is None and bearer_token("Bearer ") is None and bearer_token(None) is None
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "[::1]", "127.1.2.3"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "10.0.0.5", "example.com", "::"))  # noqa: S104


@pytest.mark.parametrize(("error", "status"), [
    (ConfigError("alpha must be between 0 and 1"), 400),
    (IndexNotFoundError("index 'x' not found"), 404),
    (ModelMismatchError("built with another model"), 409),
    (StoreConnectionError("cannot connect to http://h:9200 while searching"), 502),
    (StoreConnectionError("http://h:9200 did not answer within 1 s while searching"), 504),
    (StoreConnectionError("authentication failed at http://h:9200 (HTTP 401) while searching"), 403),
    (StoreError("http://h:9200 failed searching on index 'x' (HTTP 403): security_exception"), 403),
    (StoreError("http://h:9200 failed searching on index 'x' (HTTP 500): boom"), 502),
    (BulkWriteError("2 chunks failed", ()), 502),
    (GeneratorError("LLM server http://l:8080 timed out before answering"), 504),
    (GeneratorError("cannot reach the LLM server at http://l:8080"), 502),
    (EsragError("something else"), 500),
])
def test_errors_map_to_meaningful_statuses(error: EsragError, status: int) -> None:
    assert status_for(error)[0] == status


def test_redaction_removes_url_credentials_and_known_secrets() -> None:
    text = "cannot connect to https://elastic:hunter22@es.example:9200 with key sk-abcdef123456 (http://a@b)"
    out = redact(text, ["sk-abcdef123456", ""])
    assert out == "cannot connect to https://***@es.example:9200 with key *** (http://***@b)"


def test_validation_errors_name_the_body_field() -> None:
    errs = field_errors([{"loc": ("body", "alpha"), "msg": "Input should be less than or equal to 1"},
                         {"loc": ("body", "messages", 0, "role"), "msg": "Value error, bad role"},
                         {"loc": ("body",), "msg": "Field required"}])
    assert [(e.field, e.message) for e in errs] == [("alpha", "Input should be less than or equal to 1"),
                                                    ("messages.0.role", "bad role"), ("body", "Field required")]
