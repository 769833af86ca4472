"""The API's pure rules: API key parsing and constant-time lookup, error -> status mapping (one status per
error class and per problem type), redaction, request ids, how errors name settings."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import esrag.api.problems as problems_module
from esrag.api.auth import ApiKeys, Scope, bearer_token, is_loopback, load_keys
from esrag.api.problems import FRAMEWORK_TYPES, PROBLEM_TYPES, field_errors, status_for
from esrag.errors import (
    BulkWriteError,
    ConfigError,
    EsragError,
    GeneratorError,
    GeneratorTimeoutError,
    IndexNotFoundError,
    ModelMismatchError,
    StoreConnectionError,
    StoreError,
    StoreForbiddenError,
    StoreTimeoutError,
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
    (ConfigError("alpha must be between 0 and 1"), 422),
    (IndexNotFoundError("index 'x' not found"), 404),
    (ModelMismatchError("built with another model"), 409),
    (StoreConnectionError("cannot connect to http://h:9200 while searching"), 502),
    (StoreTimeoutError("http://h:9200 did not answer within 1 s while searching"), 504),
    (StoreForbiddenError("authentication failed at http://h:9200 (HTTP 401) while searching"), 403),
    (StoreError("http://h:9200 failed searching on index 'x' (HTTP 500): boom"), 502),
    (BulkWriteError("2 chunks failed", ()), 502),
    (GeneratorTimeoutError("LLM server http://l:8080 timed out before answering"), 504),
    (GeneratorError("cannot reach the LLM server at http://l:8080"), 502),
    (EsragError("something else"), 500),
])
def test_errors_map_to_meaningful_statuses(error: EsragError, status: int) -> None:
    assert status_for(error)[0] == status


def _subclasses(cls: type[EsragError]) -> list[type[EsragError]]:
    return [cls, *(c for sub in cls.__subclasses__() for c in _subclasses(sub))]


def test_every_error_class_carries_its_status_and_a_listed_problem_type() -> None:
    import esrag.errors as errors

    classes = _subclasses(EsragError)
    assert {c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, EsragError)} <= set(classes)
    for cls in classes:
        assert cls.problem in PROBLEM_TYPES, cls
        assert PROBLEM_TYPES[cls.problem].status == cls.http_status, cls
    # the message text does not choose: the same text in two classes gives two statuses
    text = "Elasticsearch at http://h:9200 did not answer within 1 s (HTTP 401) timed out"
    assert [status_for(c(text))[0] for c in (StoreError, StoreTimeoutError, StoreForbiddenError, GeneratorError,
                                             GeneratorTimeoutError)] == [502, 504, 403, 502, 504]


def test_problem_statuses_come_from_classes_not_message_text() -> None:
    source = (Path(problems_module.__file__)).read_text()
    tree = ast.parse(source)
    status_for_src = ast.get_source_segment(source, next(
        n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "status_for"))
    assert status_for_src is not None and "str(" not in status_for_src and " in " not in status_for_src
    assert not any(isinstance(n, ast.Import | ast.ImportFrom) and any(a.name == "re" for a in n.names)
                   for n in ast.walk(tree))


def test_each_problem_type_has_one_status_wherever_the_api_raises_it() -> None:
    """Every ApiProblem(status, detail, kind) in esrag/api uses a listed type with its listed status, and
    the framework's own errors (404, 405, 413) map to listed types: one type per kind, one status per type."""
    api = Path(problems_module.__file__).parent
    seen = 0
    for path in sorted(api.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "ApiProblem":
                args = [a.value if isinstance(a, ast.Constant) else None for a in node.args]
                kind = args[2] if len(args) > 2 else next(
                    (k.value.value for k in node.keywords if k.arg == "kind" and isinstance(k.value, ast.Constant)),
                    None)
                assert kind in PROBLEM_TYPES, (path.name, node.lineno, kind)
                assert PROBLEM_TYPES[kind].status == args[0], (path.name, node.lineno, kind)
                seen += 1
    assert seen >= 8
    assert all(PROBLEM_TYPES[kind].status == status for status, kind in FRAMEWORK_TYPES.items())


def test_store_and_llm_errors_are_classified_where_they_are_raised() -> None:
    from elastic_transport import ConnectionTimeout

    from esrag.config import Settings
    from esrag.generators.openai_compat import OpenAICompatGenerator
    from esrag.stores.es_client import ErrorTranslator

    errors = ErrorTranslator(Settings(), "http://h:9200", "docs")
    assert type(errors.translate(ConnectionTimeout("slow"), "searching")) is StoreTimeoutError
    side = {"status": 403, "error": {"type": "security_exception", "reason": "no read privilege"}}
    assert type(errors.item(side, "searching")) is StoreForbiddenError
    assert type(errors.item({**side, "status": 500}, "searching")) is StoreError
    llm = OpenAICompatGenerator(Settings(llm_url="http://127.0.0.1:9/v1"))
    assert type(llm._error(TimeoutError("slow"), "")) is GeneratorTimeoutError  # noqa: SLF001
    assert type(llm._error(ConnectionRefusedError("no"), "")) is GeneratorError  # noqa: SLF001


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


def test_an_error_names_settings_as_each_face_words_them() -> None:
    from esrag.api.app import api_wording
    from esrag.cli.common import flag_of
    from esrag.errors import setting

    e = ConfigError(f"the answer reserves 512 ({setting('max_new_tokens')}); lower {setting('max_new_tokens')} "
                    f"or change {setting('generator')}", field="question")
    assert str(e) == "the answer reserves 512 (max_new_tokens); lower max_new_tokens or change generator"
    assert e.worded(flag_of) == ("the answer reserves 512 (--max-new-tokens); lower --max-new-tokens or change "
                                 "--generator")
    assert flag_of("no_such_setting") == "ESRAG_NO_SUCH_SETTING"
    detail, field = api_wording(e, "/v1/ask")
    assert detail == ("the answer reserves 512 (the server's max_new_tokens setting); lower the server's "
                      "max_new_tokens setting or change generator") and field == "question"
    detail, field = api_wording(e, "/v1/chat/completions")
    assert detail.endswith("or change esrag.generator") and field == "messages"
    assert api_wording(ConfigError("x", field="alpha"), "/v1/search") == ("x", "alpha")
    assert api_wording(ConfigError("x", field="es_url"), "/v1/search") == ("x", None)


def test_a_request_id_is_the_clients_plain_token_unless_it_holds_a_secret() -> None:
    from esrag.api.app import request_id

    secrets = frozenset({R})
    assert request_id("abc-123_X.y", secrets) == "abc-123_X.y"
    for given in ("", "a b", "a\nb", "x" * 65, "é", R, f"id-{R}", "a%0Ab"):
        new = request_id(given, secrets)
        assert new != given and len(new) == 32 and all(c in "0123456789abcdef" for c in new)


def test_the_credentials_a_caller_sends_are_found_for_masking() -> None:
    from esrag.api.app import caller_credentials

    assert caller_credentials({"authorization": f"Bearer {R}", "x-es-api-key": f" {W} "}) == (R, W)
    assert caller_credentials({"authorization": f"Basic {R}"}) == ()
    assert caller_credentials({}) == ()
