"""docker-compose.yml must be a valid Compose file with the services esrag documents."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"


def _compose_cmd() -> list[str]:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail("neither `docker compose` nor `docker-compose` is installed (scripts/test.sh installs it)")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


@pytest.mark.parametrize("profile", [None, "vllm"])
def test_compose_config_is_valid(profile: str | None) -> None:
    cmd = [*_compose_cmd(), "-f", str(COMPOSE)]
    if profile:
        cmd += ["--profile", profile]
    result = subprocess.run([*cmd, "config", "-q"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_elasticsearch_is_single_node_8x_with_healthcheck(compose: dict[str, Any]) -> None:
    es = compose["services"]["elasticsearch"]
    assert es["image"].split(":")[-1].startswith("8.")
    assert "discovery.type=single-node" in es["environment"]
    assert "_cluster/health" in " ".join(es["healthcheck"]["test"])
    assert compose["services"]["kibana"]["depends_on"]["elasticsearch"]["condition"] == "service_healthy"


def test_tgi_serves_zephyr_in_4bit_on_a_gpu(compose: dict[str, Any]) -> None:
    tgi = compose["services"]["tgi"]
    cmd = tgi["command"]
    assert cmd[cmd.index("--model-id") + 1] == "HuggingFaceH4/zephyr-7b-beta"
    assert cmd[cmd.index("--quantize") + 1] == "bitsandbytes-nf4"
    device = tgi["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["capabilities"] == ["gpu"]


def test_vllm_is_an_alternative_profile_and_esrag_is_wired_to_the_llm(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["vllm"]["profiles"] == ["vllm"]
    assert "HuggingFaceH4/zephyr-7b-beta" in services["vllm"]["command"]
    env = services["esrag"]["environment"]
    assert "ESRAG_ES_URL=http://elasticsearch:9200" in env
    assert any(e.startswith("ESRAG_LLM_URL=") for e in env)


def test_esrag_api_service_serves_with_keys_over_elasticsearch_and_tgi(compose: dict[str, Any]) -> None:
    api = compose["services"]["esrag"]
    assert api["command"][:3] == ["serve", "--host", "0.0.0.0"]  # noqa: S104 - inside the container
    env = api["environment"]
    assert "ESRAG_ES_URL=http://elasticsearch:9200" in env and "ESRAG_LLM_URL=${ESRAG_LLM_URL:-http://tgi:80/v1}" in env
    assert any(e.startswith("ESRAG_API_KEYS=") for e in env)  # a non-loopback bind refuses to run without keys
    assert api["ports"] == ["127.0.0.1:${ESRAG_PORT:-8000}:8000"]
    assert api["depends_on"]["elasticsearch"]["condition"] == "service_healthy"
    assert "/readyz" in " ".join(api["healthcheck"]["test"])


def test_compose_config_with_the_api_profile_is_valid() -> None:
    result = subprocess.run([*_compose_cmd(), "-f", str(COMPOSE), "--profile", "api", "config", "-q"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
