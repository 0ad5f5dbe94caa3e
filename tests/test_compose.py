"""docker-compose.yml must match the code: every command's module, every environment variable, every setting."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from shared.settings import ENV_ALIASES, ROOT, SettingsError, load_settings

COMPOSE = ROOT / "docker-compose.yml"
# Variables read by code outside the settings file (grep keeps this list honest, see below).
EXTRA_ENV = {"LOG_JSON"}


def services() -> dict[str, dict]:  # type: ignore[type-arg]
    return yaml.safe_load(COMPOSE.read_text())["services"]


def _resolve(value: str) -> str:
    """Compose's ${VAR:-default} with an empty environment."""
    return re.sub(r"\$\{[A-Z_]+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", str(value))


@pytest.mark.parametrize("name", sorted(services()))
def test_service_command_and_env_exist(name: str) -> None:
    svc = services()[name]
    if "image" in svc and "build" not in svc:
        return  # third-party image (redis)
    cmd = [str(c) for c in svc.get("command", ["python", "-m", "gateway"])]
    assert cmd[:2] == ["python", "-m"], cmd
    module = cmd[2]
    assert importlib.util.find_spec(module) is not None, f"{name}: module {module} does not exist"
    assert (ROOT / module / "__main__.py").exists(), f"{name}: {module} has no __main__"
    if module == "ingestor":
        assert cmd[3] in ("binance", "okx")
    env = {k: _resolve(v) for k, v in (svc.get("environment") or {}).items()}
    for var in env:
        assert var in ENV_ALIASES or var.startswith("SR_") or var in EXTRA_ENV, f"{name}: unknown variable {var}"
    try:
        load_settings(env={k: v for k, v in env.items() if v != ""} | {"JWT_SECRET": "x" * 32})
    except SettingsError as e:  # an SR_ key that no longer exists fails here (settings forbid unknown keys)
        pytest.fail(f"{name}: {e}")


def test_extra_env_is_read_by_code() -> None:
    code = "\n".join(p.read_text() for p in ROOT.glob("*/*.py") if ".venv" not in p.parts)
    for var in EXTRA_ENV:
        assert f'"{var}"' in code, f"{var} is no longer read anywhere"


def test_sim_profile_points_ingestors_at_simulator() -> None:
    svcs = services()
    sim_ingestors = [s for s in svcs.values() if "sim" in s.get("profiles", []) and "ingestor" in s.get("command", [])]
    assert len(sim_ingestors) == 2
    for s in sim_ingestors:
        urls = [v for k, v in s["environment"].items() if k.endswith("_WS_URL")]
        assert urls and all("simulator:" in u for u in urls)
    assert "live" in svcs["ingestor-binance"]["profiles"]
    assert "COMPOSE_PROFILES=live" in (ROOT / ".env").read_text()


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
@pytest.mark.parametrize("profile", [[], ["--profile", "sim"]])
def test_docker_compose_config_accepts_file(profile: list[str]) -> None:
    r = subprocess.run(["docker-compose", *profile, "config", "-q"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_dockerfile_copies_every_package() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for pkg in ("shared", "ingestor", "gateway", "matcher", "simulator", "config"):
        assert f"COPY {pkg} ./{pkg}" in text
    assert "USER app" in text
    assert Path(ROOT / ".dockerignore").exists()
