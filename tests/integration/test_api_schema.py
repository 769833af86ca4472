"""The API's contract: the served OpenAPI schema equals the committed snapshot (so every API change is
deliberate), and the running server, fuzzed from that schema by schemathesis, answers every generated
request without a 5xx and with a status, content type and body its schema allows. A second fuzzer starts
from schemathesis's valid requests and makes each hostile in one place a JSON schema cannot express: a lone
surrogate in any string or key, a non-finite number at any depth (in place of a number, or added to any
object or list), a ``%2F`` or bytes that are not UTF-8 in a document id; each must be a 4xx naming the field.

After a deliberate change, regenerate the snapshot with ``python -m tests.integration.test_api_schema``.
"""

from __future__ import annotations

import json
import math
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from esrag.validation import dotted, printable
from tests.fixtures.api import ApiServer

pytestmark = pytest.mark.integration

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance, negative_data_rejection]
KEY = "fuzz-key-0123456789abcdef"
SNAPSHOT = Path(__file__).with_name("openapi.json")
#: examples per operation and generation mode: about a minute in all on two shared cores
EXAMPLES = 60


def served_schema(url: str) -> dict[str, Any]:
    r = httpx.get(f"{url}/openapi.json", timeout=30)
    assert r.status_code == 200
    schema: dict[str, Any] = r.json()
    return schema


def test_served_openapi_schema_equals_the_committed_snapshot(serve: Callable[..., ApiServer], tmp_path: Path) -> None:
    server = serve("--sqlite-dir", str(tmp_path / "db"), "--embedder", "hashed", "--generator", "echo")
    assert served_schema(server.url) == json.loads(SNAPSHOT.read_text()), (
        "the API changed: if deliberately, run `python -m tests.integration.test_api_schema` and commit "
        "tests/integration/openapi.json")
    assert httpx.get(f"{server.url}/docs", timeout=30).status_code == 200


@pytest.mark.slow
@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE])
def test_fuzzed_requests_get_no_5xx_and_schema_conformant_answers(
        serve: Callable[..., ApiServer], tmp_path: Path, mode: schemathesis.GenerationMode) -> None:
    server = serve("--sqlite-dir", str(tmp_path / "db"), "--embedder", "hashed", "--generator", "echo",
                   env={"ESRAG_API_KEYS": f"rw:{KEY}"})
    seed = {"documents": [{"id": f"d{i}", "text": f"Document {i} is about topic {i % 3}."} for i in range(5)]}
    auth = {"Authorization": f"Bearer {KEY}"}
    assert httpx.post(f"{server.url}/v1/documents", json=seed, headers=auth, timeout=30).status_code == 200
    api = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    failures: list[str] = []
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) == 11  # search, ask, chat, 5 documents (path and ?id= forms), status, healthz, readyz

    for operation in operations:
        if mode is schemathesis.GenerationMode.NEGATIVE and operation.path in ("/healthz", "/readyz"):
            continue  # no input at all: nothing to make invalid
        @given(operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=CHECKS, headers=auth, timeout=30)

        try:
            check()
        except Exception as e:  # noqa: BLE001 - collected, so one run reports every failing operation
            failures.append(f"{operation.method.upper()} {operation.path}: {e}")
    assert failures == [], "\n\n".join(failures)
    assert "Traceback" not in server.log()


#: examples per operation of the hostile fuzzer
HOSTILE_EXAMPLES = 20
NON_FINITE = [math.nan, math.inf, -math.inf]
#: ids whose bytes are not UTF-8 once percent-decoded (the last is a UTF-8-encoded lone surrogate)
NOT_UTF8 = ["x%FF", "a%FEb", "%ED%A0%80", "docs%2F%C3"]
Leaf = tuple[tuple[str | int, ...], str]


def leaves(value: Any, path: tuple[str | int, ...] = ()) -> list[Leaf]:
    """Every place in a JSON value a mutation can hit, nested ones included: (path, "str" | "key" | "number"
    | "object" | "array")."""
    out: list[Leaf] = []
    if isinstance(value, str):
        out.append((path, "str"))
    elif isinstance(value, int | float) and not isinstance(value, bool):
        out.append((path, "number"))
    elif isinstance(value, dict):
        out.append((path, "object"))
        for k, child in value.items():
            out.append(((*path, k), "key"))
            out += leaves(child, (*path, k))
    elif isinstance(value, list):
        out.append((path, "array"))
        for i, child in enumerate(value):
            out += leaves(child, (*path, i))
    return out


def mutate(body: Any, leaf: Leaf, at: int, number: float) -> tuple[Any, tuple[str | int, ...]]:
    """A copy of ``body`` made hostile at ``leaf`` (a lone surrogate at character ``at`` of a string or key,
    ``number`` in place of a number or added to an object or array) and the path the server must name."""
    body = json.loads(json.dumps(body))
    path, kind = leaf
    parent: Any = body
    for p in path[:-1] if kind in ("str", "number", "key") else path:
        parent = parent[p]
    if kind == "str":
        text = parent[path[-1]]
        parent[path[-1]] = text[:at % (len(text) + 1)] + "\ud800" + text[at % (len(text) + 1):]
        return body, path
    if kind == "number":
        parent[path[-1]] = number
        return body, path
    if kind == "key":
        key = str(path[-1])
        bad = key[:at % (len(key) + 1)] + "\ud800" + key[at % (len(key) + 1):]
        parent[bad] = parent.pop(path[-1])
        return body, (*path[:-1], printable(bad))
    if kind == "object":
        parent["x9"] = number
        return body, (*path, "x9")
    parent.append(number)
    return body, (*path, len(parent) - 1)


def _url(case: schemathesis.Case, doc_id: str | None) -> str:
    path = case.path
    for name, value in (case.path_parameters or {}).items():
        raw = doc_id if doc_id is not None else urllib.parse.quote(str(value), safe="")
        path = path.replace("{" + name + "}", raw)
    query = dict(case.query or {})
    if "id" in query:
        raw = doc_id if doc_id is not None else urllib.parse.quote(str(query.pop("id")), safe="")
        return f"{path}?id={raw}"
    return path + (f"?{urllib.parse.urlencode(query)}" if query else "")


def hostile_check(operation: Any, client: httpx.Client, depths: dict[str, int]) -> Callable[[], None]:
    """A hypothesis test of one operation: each example a valid request made hostile in one place (a body
    field, at any depth, or the document id); ``depths`` records how deep the body mutations went."""
    name = f"{operation.method.upper()} {operation.path}"
    takes_id = "doc_id" in operation.path or any(p.name == "id" for p in operation.iter_parameters())

    @given(case=operation.as_strategy(generation_mode=schemathesis.GenerationMode.POSITIVE), data=st.data())
    @settings(max_examples=HOSTILE_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case: schemathesis.Case, data: st.DataObject) -> None:
        body = case.body if isinstance(case.body, dict | list) else None
        targets = leaves(body) if body is not None else []
        how = data.draw(st.sampled_from((["body"] if targets else []) + (["slash", "not-utf8"] if takes_id else [])))
        doc_id, field, expected = None, None, (422,)
        content = json.dumps(body) if body is not None else None
        if how == "body":
            # deepest first: hypothesis shrinks towards the first, and draws from all
            leaf = data.draw(st.sampled_from(sorted(targets, key=lambda t: -len(t[0]))))
            at, number = data.draw(st.integers(0, 50)), data.draw(st.sampled_from(NON_FINITE))
            if leaf[1] not in ("str", "key") or not data.draw(st.booleans()):
                if leaf[1] not in ("number", "object", "array"):  # a string's place: its parent object gets a NaN
                    leaf = (leaf[0][:-1], "object") if isinstance(_at(body, leaf[0][:-1]), dict) else ((), "object")
            bad, where = mutate(body, leaf, at, number)
            # the server names keys printable (control characters and lone surrogates escaped)
            content, field = json.dumps(bad), dotted(tuple(printable(p) if isinstance(p, str) else p for p in where))
            depths[name] = max(depths.get(name, 0), len(where))
        elif how == "slash":
            doc_id = "docs%2F" + urllib.parse.quote(data.draw(st.sampled_from(["api.md", "a", "%"])), safe="")
            expected = (200, 404, 422)
        else:
            doc_id = data.draw(st.sampled_from(NOT_UTF8))
            expected = (400, 422)  # 422: the body was refused first
        url = _url(case, doc_id)
        headers = {"Content-Type": "application/json"} if content is not None else {}
        r = client.request(case.method, url, content=content, headers=headers)
        problem = r.json()
        assert r.status_code in expected, (how, url, r.status_code, problem)
        if r.status_code == 400 or how == "body":
            names = [e["field"] for e in problem.get("errors") or []]
            assert (field or ("id" if "?id=" in url else "doc_id")) in names, (how, url, problem)
            if "chat" in name:
                assert problem["error"]["param"] == names[0]

    return check


@pytest.mark.slow
def test_hostile_values_in_any_field_and_id_are_a_4xx_naming_the_field(
        serve: Callable[..., ApiServer], tmp_path: Path) -> None:
    server = serve("--sqlite-dir", str(tmp_path / "db"), "--embedder", "hashed", "--generator", "echo",
                   env={"ESRAG_API_KEYS": f"rw:{KEY}"})
    auth = {"Authorization": f"Bearer {KEY}"}
    seed = {"documents": [{"id": f"d{i}", "text": f"Document {i} is about topic {i % 3}."} for i in range(5)]}
    assert httpx.post(f"{server.url}/v1/documents", json=seed, headers=auth, timeout=30).status_code == 200
    api = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    failures: list[str] = []
    depths: dict[str, int] = {}
    with httpx.Client(base_url=server.url, headers=auth, timeout=30) as client:
        for operation in (result.ok() for result in api.get_all_operations()):
            if operation.method.upper() == "GET":
                continue  # status, healthz, readyz: nothing a caller sends
            try:
                hostile_check(operation, client, depths)()
            except Exception as e:  # noqa: BLE001 - collected, so one run reports every failing operation
                failures.append(f"{operation.method.upper()} {operation.path}: {e}")
    assert failures == [], "\n\n".join(failures)
    # the mutations reached nested fields (metadata of a batch document, a chat message's content...)
    assert depths["POST /v1/documents"] >= 3 and depths["POST /v1/chat/completions"] >= 3, depths
    assert depths["PUT /v1/documents/{doc_id}"] >= 1 and depths["PUT /v1/documents"] >= 1, depths
    assert "Traceback" not in server.log()


def _at(body: Any, path: tuple[str | int, ...]) -> Any:
    for p in path:
        body = body[p]
    return body


if __name__ == "__main__":
    from esrag.api import create_app
    from esrag.config import Settings
    from esrag.engine import Engine

    app = create_app(Engine(Settings()))
    SNAPSHOT.write_text(json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n")
    print(f"wrote {SNAPSHOT}")
