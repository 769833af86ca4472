"""The API's contract: the served OpenAPI schema equals the committed snapshot (so every API change is
deliberate), and the running server, fuzzed from that schema by schemathesis, answers every generated
request without a 5xx and with a status, content type and body its schema allows.

After a deliberate change, regenerate the snapshot with ``python -m tests.integration.test_api_schema``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

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
    assert len(operations) == 9  # search, ask, chat, 3 documents, status, healthz, readyz

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


if __name__ == "__main__":
    from esrag.api import create_app
    from esrag.config import Settings
    from esrag.engine import Engine

    app = create_app(Engine(Settings()))
    SNAPSHOT.write_text(json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n")
    print(f"wrote {SNAPSHOT}")
