"""Credentials never leak: not into messages, reprs or logs, not through redirects, and not silently over
plain http. The leak hunt runs every CLI command as a real process with distinctive secrets, against a
reachable server (behind the recording proxy, to show the secrets were really used) and an unreachable
one, at ``-vv``, and searches stdout, stderr and every file written for them."""

from __future__ import annotations

import base64
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from esrag.config import Settings
from esrag.errors import StoreError
from esrag.generators.openai_compat import OpenAICompatGenerator, keeps_authorization
from esrag.stores.elasticsearch import ElasticsearchStore
from esrag.stores.es_client import make_client, resolve_connection
from tests.fixtures.es import free_port
from tests.fixtures.fault_proxy import FaultProxy
from tests.integration.test_eval_e2e import write_dataset

pytestmark = pytest.mark.integration

ES_PASSWORD = "Pw#1/x?y@z:ES-LEAKCANARY"  # noqa: S105 - distinctive test secrets
ES_API_KEY = "ApiKey-LEAKCANARY-7f3a9c"
LLM_API_KEY = "sk-llm-LEAKCANARY-0d41"
SECRETS = (ES_PASSWORD, ES_API_KEY, LLM_API_KEY, "LEAKCANARY")


# -- redirects of the LLM probes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "keeps"),
    [
        ("http://h:8080/v1/models", "http://h:8080/models", True),
        ("http://h:8080/v1/models", "https://h:8080/models", True),  # an upgrade to TLS, same host
        ("https://h/v1/models", "https://h:443/models", True),
        ("https://h/v1/models", "http://h/models", False),  # a downgrade: the key would travel in clear
        ("http://h:8080/v1/models", "http://evil:8080/models", False),
        ("http://h:8080/v1/models", "http://h:9090/models", False),
    ],
)
def test_authorization_follows_redirects_only_to_the_same_origin(old: str, new: str, keeps: bool) -> None:
    assert keeps_authorization(old, new) is keeps


class _Recorder(BaseHTTPRequestHandler):
    """``redirect_to`` set: answer 302 to ``<redirect_to>/r<path>``; a ``/r/`` path (or no ``redirect_to``):
    record the Authorization header and answer a model list."""

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        server: Any = self.server
        if server.redirect_to and not self.path.startswith("/r/"):
            self.send_response(302)
            self.send_header("Location", server.redirect_to + "/r" + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        server.seen.append(self.headers.get("Authorization"))
        body = b'{"data": [{"id": "m", "max_model_len": 1234}]}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture
def http_servers() -> Iterator[list[Any]]:
    made: list[Any] = []

    def make(redirect_to: str | None = None) -> Any:
        server: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
        server.redirect_to, server.seen = redirect_to, []
        threading.Thread(target=server.serve_forever, daemon=True).start()
        made.append(server)
        return server

    yield [make]
    for s in made:
        s.shutdown()
        s.server_close()


def test_probe_redirected_to_another_host_does_not_carry_the_api_key(http_servers: list[Any]) -> None:
    make = http_servers[0]
    other = make()
    port = other.server_address[1]
    first = make(redirect_to=f"http://localhost:{port}")  # another host name: another origin
    gen = OpenAICompatGenerator(Settings(llm_url=f"http://127.0.0.1:{first.server_address[1]}",
                                         llm_api_key=LLM_API_KEY))
    assert gen.context_tokens == 1234  # the redirect was followed
    assert other.seen and all(h is None for h in other.seen)


def test_probe_redirected_within_the_server_keeps_the_api_key(http_servers: list[Any]) -> None:
    server = http_servers[0]()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    server.redirect_to = url  # redirects to itself, under /r/
    gen = OpenAICompatGenerator(Settings(llm_url=url, llm_api_key=LLM_API_KEY))
    assert gen.model == "m"
    assert server.seen and server.seen == [f"Bearer {LLM_API_KEY}"] * len(server.seen)


# -- ES: clear text and TLS warnings ---------------------------------------------------------------------------


def test_basic_auth_over_plain_http_to_a_remote_host_warns(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(es_url=f"http://elastic:{ES_PASSWORD}@10.255.255.1:9200")
    with caplog.at_level(logging.WARNING):
        make_client(settings, resolve_connection(settings)).close()
    assert "plain http" in caplog.text and "10.255.255.1:9200" in caplog.text
    assert ES_PASSWORD not in caplog.text


def test_basic_auth_over_http_to_loopback_or_https_does_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    for url in (f"http://elastic:{ES_PASSWORD}@127.0.0.1:9200", "https://es.example:9243"):
        settings = Settings(es_url=url, es_username="elastic", es_password=ES_PASSWORD)
        with caplog.at_level(logging.WARNING):
            make_client(settings, resolve_connection(settings)).close()
    assert caplog.text == ""


def test_turning_tls_verification_off_warns_every_time(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(es_url="https://es.example:9243", es_verify_certs=False)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            make_client(settings, resolve_connection(settings)).close()
    assert caplog.text.count("verification is off") == 2


def test_secrets_are_not_in_reprs_or_descriptions() -> None:
    settings = Settings(es_url=f"https://elastic:{ES_PASSWORD}@es.example:9243", es_api_key=ES_API_KEY,
                        es_password=ES_PASSWORD, llm_api_key=LLM_API_KEY)
    store = ElasticsearchStore(settings)
    text = " ".join([repr(settings), str(settings), repr(store), str(store.describe()), repr(store._conn)])
    assert not any(s in text for s in SECRETS)


def test_connection_errors_never_carry_the_url_password() -> None:
    store = ElasticsearchStore(Settings(es_url=f"http://elastic:{ES_PASSWORD}@127.0.0.1:{free_port()}",
                                        es_connect_timeout=1))
    with pytest.raises(StoreError) as exc:
        store.count()
    assert "127.0.0.1" in str(exc.value) and "LEAKCANARY" not in str(exc.value)
    assert "Pw%23" not in str(exc.value)


def test_llm_errors_never_carry_the_url_password() -> None:
    from urllib.parse import quote

    from esrag.errors import GeneratorError
    from esrag.generators.base import Message
    from esrag.generators.openai_compat import OpenAICompatGenerator

    url = f"http://user:{quote(ES_PASSWORD, safe='')}@127.0.0.1:{free_port()}/v1"
    g = OpenAICompatGenerator(Settings(llm_url=url, llm_timeout=2))
    with pytest.raises(GeneratorError) as exc:
        g.generate([Message("user", "hi")])
    assert "127.0.0.1" in str(exc.value) and "LEAKCANARY" not in str(exc.value) and "user:" not in str(exc.value)


# -- the leak hunt ---------------------------------------------------------------------------------------------


def _commands(corpus: Path, dataset: Path) -> list[list[str]]:
    return [
        ["init"],
        ["ingest", str(corpus), "--json"],
        ["ingest", str(corpus)],
        ["status"],
        ["status", "--json"],
        ["search", "zebras stripes"],
        ["search", "zebras stripes", "--explain"],
        ["search", "zebras stripes", "--json"],
        ["ask", "why do zebras have stripes?"],
        ["ask", "why do zebras have stripes?", "--json"],
        ["delete", "--doc", str(corpus / "zebra.md")],
        ["eval", str(dataset)],
        ["tune", str(dataset), "--save"],
        ["config", "show"],
        ["plugins"],
        ["delete", "--all", "--yes"],
    ]


def _hunt(env: dict[str, str], commands: list[list[str]], workdir: Path) -> tuple[list[str], dict[str, int]]:
    """Run each command at -vv; returns every output that contains a secret (empty: no leak) and each
    command's exit code."""
    leaks: list[str] = []
    codes: dict[str, int] = {}
    for args in commands:
        proc = subprocess.run(  # noqa: S603 - our own CLI
            [sys.executable, "-m", "esrag.cli", "-vv", *args], env=env, cwd=workdir, capture_output=True,
            text=True, timeout=300, check=False,
        )
        codes[" ".join(a for a in args if not a.startswith("/"))] = proc.returncode  # paths left out
        for name, text in (("stdout", proc.stdout), ("stderr", proc.stderr)):
            hits = [s for s in SECRETS if s in text]
            if hits:
                leaks.append(f"esrag {' '.join(args)} (exit {proc.returncode}) {name} contains {hits}:\n{text}")
    for path in workdir.rglob("*"):
        if path.is_file() and path.suffix not in (".db", ".db-wal", ".db-shm"):
            data = path.read_bytes()
            for s in SECRETS:
                if s.encode() in data and path.name != "esrag.toml":
                    leaks.append(f"{path} contains {s!r}")
    return leaks, codes


def _env(tmp: Path, es_url: str, llm_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESRAG_") or k.startswith("ESRAG_TEST_")}
    env.update({
        "ESRAG_ES_URL": es_url.replace("http://", f"http://elastic:{ES_PASSWORD}@"),
        "ESRAG_ES_API_KEY": ES_API_KEY,
        "ESRAG_LLM_URL": llm_url,
        "ESRAG_LLM_API_KEY": LLM_API_KEY,
        "ESRAG_LLM_TIMEOUT": "5",
        "ESRAG_ES_CONNECT_TIMEOUT": "2",
        "ESRAG_ES_TIMEOUT": "10",
        "ESRAG_ES_RETRY_SECONDS": "2",
        "ESRAG_INDEX": f"leak{os.getpid()}",
        "ESRAG_CONFIG": str(tmp / "esrag.toml"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    })
    return env


@pytest.fixture
def workspace(tmp_path: Path) -> tuple[Path, Path, Path]:
    work = tmp_path / "work"
    corpus = work / "corpus"
    corpus.mkdir(parents=True)
    (work / "esrag.toml").write_text("# the leak hunt's config\n")
    (corpus / "zebra.md").write_text("# Zebras\n\nZebras have black and white stripes that confuse flies.\n")
    (corpus / "rust.md").write_text("# Rust\n\nThe borrow checker enforces a single owner for each value.\n")
    dataset = write_dataset(tmp_path / "dataset")
    return work, corpus, dataset


@pytest.mark.slow
def test_no_command_leaks_a_secret_with_a_reachable_server(
    fault_proxy: FaultProxy, workspace: tuple[Path, Path, Path]
) -> None:
    work, corpus, dataset = workspace
    env = _env(work, fault_proxy.url, f"http://127.0.0.1:{free_port()}")
    leaks, codes = _hunt(env, _commands(corpus, dataset), work)
    assert leaks == []
    ran = {c: codes[c] for c in ("init", "ingest --json", "status", "search zebras stripes", "eval",
                                 "config show")}
    assert set(ran.values()) == {0}, codes
    # the secrets were in use: the API key (which wins over the URL password) reached the server
    sent = {r.header("authorization") for r in fault_proxy.requests}
    assert sent == {f"ApiKey {ES_API_KEY}"}


@pytest.mark.slow
def test_no_command_leaks_a_secret_with_unreachable_servers(workspace: tuple[Path, Path, Path]) -> None:
    work, corpus, dataset = workspace
    env = _env(work, f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}")
    env["ESRAG_ES_API_KEY"] = ""  # basic auth from the URL this time
    leaks, codes = _hunt(env, _commands(corpus, dataset), work)
    assert leaks == []
    assert codes["status"] == 1 and codes["search zebras stripes"] == 1, codes  # they did try to connect


def test_basic_auth_from_a_url_password_is_what_is_sent(fault_proxy: FaultProxy) -> None:
    url = fault_proxy.url.replace("http://", f"http://elastic:{ES_PASSWORD}@")
    store = ElasticsearchStore(Settings(es_url=url))
    try:
        assert store.exists() is False
    finally:
        store.close()
    expected = "Basic " + base64.b64encode(f"elastic:{ES_PASSWORD}".encode()).decode()
    assert {r.header("authorization") for r in fault_proxy.requests} == {expected}
