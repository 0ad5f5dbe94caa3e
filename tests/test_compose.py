"""docker-compose.yml must match the code: every command's module, every environment variable, every setting."""

from __future__ import annotations

import importlib.util
import inspect
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import uvicorn.config
import yaml

from shared.settings import ENV_ALIASES, EXCHANGES, ROOT, SettingsError, load_settings

COMPOSE = ROOT / "docker-compose.yml"
CLUSTER_CONF = ROOT / "config" / "redis-cluster.conf"
CLUSTER_INIT = ROOT / "config" / "redis-cluster-init.sh"
NGINX_CONF = ROOT / "config" / "nginx-cluster.conf"
# Variables read by code outside the settings file (grep keeps this list honest, see below).
EXTRA_ENV = {"LOG_JSON"}
# Variables read by a library the processes run (uvicorn), checked against its source below.
LIBRARY_ENV = {"FORWARDED_ALLOW_IPS"}
PROFILES = ("live", "sim", "cluster")


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # type: ignore[no-any-return]


def services() -> dict[str, dict]:  # type: ignore[type-arg]
    return compose()["services"]  # type: ignore[no-any-return]


def selected(profile: str) -> set[str]:
    """What `docker compose --profile <profile> up` starts: a service without profiles runs in every one."""
    return {name for name, svc in services().items() if not svc.get("profiles") or profile in svc["profiles"]}


def command(svc: dict[str, Any]) -> list[str]:
    return [str(c) for c in svc.get("command", ["python", "-m", "gateway"])]


def cluster_nodes() -> dict[str, dict]:  # type: ignore[type-arg]
    return {n: s for n, s in services().items() if n in selected("cluster") and command(s)[0] == "redis-server"}


def cluster_apps() -> dict[str, dict]:  # type: ignore[type-arg]
    """The cluster profile's own processes on Redis (the simulator uses none)."""
    return {n: s for n, s in services().items()
            if n in selected("cluster") and "build" in s and command(s)[:3] != ["python", "-m", "simulator"]}


def env_of(svc: dict[str, Any]) -> dict[str, str]:
    return {k: _resolve(v) for k, v in (svc.get("environment") or {}).items()}


def mounts(svc: dict[str, Any]) -> dict[str, str]:
    """Container path -> the volume entry mounted there."""
    return {str(v).split(":")[1]: str(v) for v in svc.get("volumes", [])}


def directives(text: str) -> str:
    """A config file without its comments and blank lines."""
    lines = (line.split("#", 1)[0].rstrip() for line in text.splitlines())
    return "\n".join(line for line in lines if line.strip())


def _resolve(value: str) -> str:
    """Compose's ${VAR:-default} with an empty environment."""
    return re.sub(r"\$\{[A-Z_]+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", str(value))


@pytest.mark.parametrize("name", sorted(services()))
def test_service_command_and_env_exist(name: str) -> None:
    svc = services()[name]
    if "image" in svc and "build" not in svc:
        return  # third-party image (redis, nginx)
    cmd = command(svc)
    assert cmd[:2] == ["python", "-m"], cmd
    module = cmd[2]
    assert importlib.util.find_spec(module) is not None, f"{name}: module {module} does not exist"
    assert (ROOT / module / "__main__.py").exists(), f"{name}: {module} has no __main__"
    if module == "ingestor":
        assert cmd[3] in ("binance", "okx")
    env = {k: _resolve(v) for k, v in (svc.get("environment") or {}).items()}
    for var in env:
        assert var in ENV_ALIASES or var.startswith("SR_") or var in EXTRA_ENV | LIBRARY_ENV, \
            f"{name}: unknown variable {var}"
    try:
        load_settings(env={k: v for k, v in env.items() if v != ""} | {"JWT_SECRET": "x" * 32})
    except SettingsError as e:  # an SR_ key that no longer exists fails here (settings forbid unknown keys)
        pytest.fail(f"{name}: {e}")


def test_extra_env_is_read_by_code() -> None:
    code = "\n".join(p.read_text() for p in ROOT.glob("*/*.py") if ".venv" not in p.parts)
    for var in EXTRA_ENV:
        assert f'"{var}"' in code, f"{var} is no longer read anywhere"


def test_library_env_is_read_by_uvicorn() -> None:
    for var in LIBRARY_ENV:
        assert f'"{var}"' in inspect.getsource(uvicorn.config), f"uvicorn no longer reads {var}"


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
@pytest.mark.parametrize("profile", [[], ["--profile", "sim"], ["--profile", "cluster"]])
def test_docker_compose_config_accepts_file(profile: list[str]) -> None:
    r = subprocess.run(["docker-compose", *profile, "config", "-q"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_dockerfile_copies_every_package() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for pkg in ("shared", "ingestor", "gateway", "matcher", "simulator", "config"):
        assert f"COPY {pkg} ./{pkg}" in text
    assert "USER app" in text
    assert Path(ROOT / ".dockerignore").exists()


def test_profiles_select_their_services() -> None:
    assert selected("live") == {"redis", "matcher", "gateway", "ingestor-binance", "ingestor-okx"}
    assert selected("sim") == {"redis", "matcher", "gateway", "simulator", "ingestor-binance-sim", "ingestor-okx-sim"}
    cluster = selected("cluster")
    assert not cluster & (selected("live") | selected("sim")) - {"simulator"}, "a single-node service in the cluster"
    assert cluster == set(cluster_nodes()) | set(cluster_apps()) | {"redis-cluster-init", "lb", "simulator"}


@pytest.mark.parametrize("profile", PROFILES)
def test_dependencies_run_in_the_same_profile(profile: str) -> None:
    svcs = services()
    for name in selected(profile):
        for dep in svcs[name].get("depends_on") or ():
            assert dep in selected(profile), f"{profile}: {name} depends on {dep}, which does not run there"


def test_cluster_has_six_redis_nodes() -> None:
    nodes = cluster_nodes()
    assert sorted(nodes) == [f"redis-{i}" for i in range(1, 7)]
    conf = dict(line.split(None, 1) for line in directives(CLUSTER_CONF.read_text()).splitlines())
    assert conf["cluster-enabled"] == "yes" and conf["cluster-config-file"] == "nodes.conf"
    assert conf["appendonly"] == "yes"
    assert conf["cluster-preferred-endpoint-type"] == "hostname"  # clients follow MOVED to the service name
    data = set()
    for name, svc in nodes.items():
        assert svc["image"].startswith("redis:7"), name
        cmd = command(svc)
        assert mounts(svc)[cmd[1]] == f"./config/redis-cluster.conf:{cmd[1]}:ro", name
        assert cmd[cmd.index("--cluster-announce-hostname") + 1] == name
        assert svc["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
        data.add(mounts(svc)["/data"].split(":")[0])
    assert len(data) == len(nodes) and data <= set(compose()["volumes"]), "one named data volume per node"


def test_cluster_init_forms_three_masters_with_one_replica_each() -> None:
    init = services()["redis-cluster-init"]
    nodes = cluster_nodes()
    assert init["profiles"] == ["cluster"] and init["image"].startswith("redis:7") and init["restart"] == "no"
    cmd = command(init)
    assert cmd[0] == "sh" and mounts(init)[cmd[1]] == f"./config/redis-cluster-init.sh:{cmd[1]}:ro"
    assert cmd[2:] == [f"{n}:6379" for n in sorted(nodes)]
    assert {d: c["condition"] for d, c in init["depends_on"].items()} == dict.fromkeys(nodes, "service_healthy")
    script = directives(CLUSTER_INIT.read_text())
    m = re.search(r"redis-cli --cluster create \S+ --cluster-replicas (\d+) --cluster-yes", script)
    assert m, "the init does not run redis-cli --cluster create"
    per_master = 1 + int(m.group(1))
    assert len(nodes) % per_master == 0 and (len(nodes) // per_master, per_master - 1) == (3, 1)
    # Idempotent: a formed cluster is left alone; either way the init ends once every node is ok.
    assert re.search(r"if info .*cluster_slots_assigned:16384", script)
    assert "cluster_state:ok" in script


def test_cluster_apps_use_the_cluster() -> None:
    nodes = cluster_nodes()
    apps = cluster_apps()
    assert {command(s)[2] for s in apps.values()} == {"matcher", "gateway", "ingestor"}
    for name, svc in apps.items():
        env = env_of(svc)
        assert env["REDIS_CLUSTER"] == "1", name
        seeds = [urlsplit(u) for u in env["REDIS_URL"].split(",")]
        assert len(seeds) >= 3 and {(u.hostname, u.port) for u in seeds} <= {(n, 6379) for n in nodes}, name
        settings = load_settings(env={k: v for k, v in env.items() if v} | {"JWT_SECRET": "x" * 32})
        assert settings.redis.cluster, name
        assert svc["depends_on"]["redis-cluster-init"] == {"condition": "service_completed_successfully"}, name


def test_cluster_shards_cover_every_pair() -> None:
    apps = cluster_apps()
    matchers = [s for s in apps.values() if command(s)[2] == "matcher"]
    assert sum(s.get("deploy", {}).get("replicas", 1) for s in matchers) == 2
    assert {env_of(s)["SR_MATCHER__SHARDS"] for s in matchers} == {"4"}
    for exchange in EXCHANGES:
        ingestors = [s for s in apps.values() if command(s)[2:4] == ["ingestor", exchange]]
        shards = sorted(command(s)[command(s).index("--shard") + 1] for s in ingestors)
        assert shards == ["1/2", "2/2"], exchange
        for s in ingestors:  # the simulator by default; the variable switches to the exchange
            var = f"{exchange.upper()}_WS_URL"
            assert s["environment"][var].startswith(f"${{{var}:-") and "//simulator:" in env_of(s)[var]
            assert s["depends_on"]["simulator"] == {"condition": "service_healthy"}


def test_load_balancer_proxies_websockets_to_the_gateways() -> None:
    svcs = services()
    lb, gw = svcs["lb"], svcs["gateway-cluster"]
    name, _, tag = lb["image"].partition(":")
    assert name == "nginx" and tuple(map(int, tag.split("-")[0].split("."))) >= (1, 27), "`resolve` needs 1.27.3+"
    assert lb["ports"] == ["${PORT:-8000}:80"]
    assert mounts(lb)["/etc/nginx/conf.d/default.conf"] == "./config/nginx-cluster.conf:/etc/nginx/conf.d/default.conf:ro"
    assert lb["depends_on"] == {"gateway-cluster": {"condition": "service_healthy"}}
    conf = directives(NGINX_CONF.read_text())
    for line in ("listen 80;", "proxy_pass http://gateways;", "proxy_http_version 1.1;",
                 "proxy_set_header Upgrade $http_upgrade;", "proxy_set_header Connection $connection_upgrade;",
                 "map $http_upgrade $connection_upgrade {", "default upgrade;", "proxy_read_timeout 1h;",
                 "resolver 127.0.0.11"):
        assert line in conf, f"nginx-cluster.conf lacks {line!r}"
    # Every replica, re-resolved through Docker's DNS, on the port the gateway listens on.
    env = env_of(gw)
    assert env["SR_GATEWAY__HOST"] == "0.0.0.0"
    port = load_settings(env=env | {"JWT_SECRET": "x" * 32}).gateway.port
    assert re.search(rf"upstream gateways {{\s+zone \w+ \w+;\s+server gateway-cluster:{port} resolve;", conf)
    assert "ports" not in gw, "a published port cannot be scaled; clients come through lb"
    assert "healthcheck" in gw
    # The gateways trust X-Forwarded-For from anyone, so lb must replace what clients send, not append to it.
    assert env["FORWARDED_ALLOW_IPS"] == "*"
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in conf and "$proxy_add_x_forwarded_for" not in conf
