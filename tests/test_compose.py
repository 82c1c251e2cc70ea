"""compose.yaml, as docker-compose itself reads it: the whole cluster — a 3-node NATS cluster that
fsyncs before it acknowledges, command-service replicas on it with R3 streams, the projector on
PostgreSQL, an agent on the host's network, and the credentials job they all wait for.

The real tool validates the file (`docker-compose config` fails on an invalid one); the
assertions run on its normalised output. `./dev` installs docker-compose (Debian package).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from splice.auth import Credentials, Registry
from splice.natsserver import nats_server_binary

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose.yaml"


def compose_command() -> list[str]:
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose is not installed: run ./dev setup (it installs the Debian package)"
    return [exe]


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    res = subprocess.run(
        [*compose_command(), "-f", str(COMPOSE), "config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, f"docker-compose rejects compose.yaml:\n{res.stderr}"
    parsed = yaml.safe_load(res.stdout)
    assert isinstance(parsed, dict) and parsed.get("services"), res.stdout
    return parsed


def mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each volume, in the short (compose v1) or long (v2) syntax."""
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, str):
            source, target = v.split(":")[:2]
        else:
            source, target = v.get("source", ""), v["target"]
        out.append((source, target))
    return out


def flag(command: list[str], *names: str) -> str | None:
    for i, arg in enumerate(command):
        for n in names:
            if arg == n and i + 1 < len(command):
                return command[i + 1]
            if arg.startswith(n + "="):
                return arg.split("=", 1)[1]
    return None


def nats_services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: s
        for name, s in config["services"].items()
        if str(s.get("image", "")).split(":")[0] in ("nats", "docker.io/library/nats")
    }


def command_services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: s
        for name, s in config["services"].items()
        if list(s.get("command") or [])[:1] == ["serve"]
    }


def splice_services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run this project's image (the credentials job included)."""
    return {
        name: s
        for name, s in config["services"].items()
        if str(s.get("image", "")).split(":")[0] == "splice" or s.get("build")
    }


def credentials_job(config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    jobs = [
        (name, s)
        for name, s in splice_services(config).items()
        if "credentials init" in " ".join(str(a) for a in s.get("command") or [])
    ]
    assert len(jobs) == 1, f"one job runs `splice credentials init`: {jobs}"
    return jobs[0]


def running(config: dict[str, Any], verb: str) -> dict[str, dict[str, Any]]:
    return {
        name: s
        for name, s in splice_services(config).items()
        if list(s.get("command") or [])[:1] == [verb]
    }


def strip_comments(text: str) -> str:
    return "\n".join(re.sub(r"(#|^\s*//).*$", "", line) for line in text.splitlines())


def block(text: str, name: str) -> str:
    """The body of a top-level `name { ... }` block of a nats-server config (no nesting needed)."""
    m = re.search(rf"^\s*{name}\s*[:=]?\s*\{{(.*?)^\s*\}}", text, re.S | re.M)
    assert m, f"no {name} block in the nats-server config"
    return m.group(1)


def with_accounts(conf: Path, tmp: Path) -> Path:
    """A copy of `conf` beside the `auth/accounts.conf` that the credentials volume holds."""
    copy = tmp / conf.name
    copy.write_text(conf.read_text())
    registry = Registry(tmp / "auth")
    (tmp / "auth" / "accounts.conf").write_text(registry.server_config())
    return copy


def test_three_nats_nodes_with_jetstream_and_fsync_always(
    config: dict[str, Any], tmp_path: Path
) -> None:
    nodes = nats_services(config)
    assert len(nodes) == 3, sorted(config["services"])
    declared = set((config.get("volumes") or {}).keys())
    data_volumes = set()
    server_names = set()
    for name, s in nodes.items():
        tag = s["image"].split(":")[1]
        major, minor = (int(x) for x in re.findall(r"\d+", tag)[:2])
        assert (major, minor) >= (2, 12), f"{name}: {s['image']} (atomic batches need >= 2.12)"
        command = [str(a) for a in s["command"]]
        conf_target = flag(command, "--config", "-c")
        assert conf_target, f"{name} runs without a config file: {command}"
        sources = {t: src for src, t in mounts(s)}
        assert conf_target in sources, f"{name}: {conf_target} is not mounted"
        conf = Path(sources[conf_target])
        assert conf.is_file() and conf.resolve().is_relative_to(ROOT), conf
        text = strip_comments(conf.read_text())
        js = block(text, "jetstream")
        assert re.search(r"^\s*sync_interval\s*[:=]\s*\"?always\"?\s*$", js, re.M), js
        store = re.search(r"^\s*store_dir\s*[:=]\s*\"?([^\"\s]+)\"?", js, re.M)
        assert store, f"{name}: no jetstream store_dir"
        # the store lives on a named volume of this node's own
        vol = [src for src, t in mounts(s) if Path(store.group(1)).is_relative_to(t)]
        assert vol and vol[0] in declared, f"{name}: store {store.group(1)} not on a named volume"
        data_volumes.add(vol[0])
        # permissions: the accounts made by `splice credentials init`, in a volume beside it
        assert re.search(r'^\s*include\s+"auth/accounts.conf"', text, re.M), "no accounts"
        assert ("splice-auth", str(Path(conf_target).parent / "auth")) in mounts(s), name
        cluster = block(text, "cluster")
        routes = re.findall(r"nats-route://[^\s\"',\]]+", cluster)
        assert len(set(routes)) == 3, f"the cluster block must route to 3 nodes: {routes}"
        for other in nodes:
            assert re.search(rf"//{re.escape(other)}:\d+", cluster), f"no route to {other}"
        server_names.add(flag(command, "--name", "-n", "--server_name"))
        assert s.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        # the real server parses the file, with the accounts `splice credentials init` makes
        res = subprocess.run(
            [nats_server_binary(), "-c", str(with_accounts(conf, tmp_path)), "-t"],
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0, res.stdout + res.stderr
    assert len(data_volumes) == 3, f"nodes must not share a store: {data_volumes}"
    assert server_names == set(nodes), f"server names {server_names} must be the service names"


def test_two_command_service_replicas_on_the_cluster_with_r3(config: dict[str, Any]) -> None:
    nodes = nats_services(config)
    replicas = command_services(config)
    assert len(replicas) >= 2, sorted(config["services"])
    cluster_urls = {f"nats://{n}:4222" for n in nodes}
    for name, s in replicas.items():
        build = s.get("build") or {}
        assert Path(build.get("context", "")).resolve() == ROOT, f"{name}: {build}"
        assert (ROOT / build.get("dockerfile", "Dockerfile")).is_file()
        url = flag([str(a) for a in s["command"]], "--nats-url")
        assert url and set(url.split(",")) == cluster_urls, f"{name}: --nats-url {url}"
        env = s.get("environment") or {}
        assert str(env.get("JETSTREAM_REPLICAS")) == "3", name
        # the services connect with their own credentials, from the credentials volume
        creds = Path(str(env.get("SPLICE_CREDS")))
        assert any(creds.is_relative_to(t) for src, t in mounts(s) if src == "splice-auth"), name
        deps = s.get("depends_on") or {}
        for n in nodes:
            assert n in deps, f"{name} does not wait for {n}"
            if isinstance(deps, dict):
                assert deps[n].get("condition") == "service_healthy", (name, n, deps[n])


def test_every_splice_service_waits_for_the_credentials_job(config: dict[str, Any]) -> None:
    job, _ = credentials_job(config)
    others = {n: s for n, s in splice_services(config).items() if n != job}
    assert len(others) >= 4, sorted(others)  # 2 replicas, the projector, an agent
    for name, s in others.items():
        deps = s.get("depends_on") or {}
        assert job in deps, f"{name} does not wait for {job}"
        if isinstance(deps, dict):
            assert deps[job].get("condition") == "service_completed_successfully", (name, deps[job])
    for name in nats_services(config):
        assert job in (config["services"][name].get("depends_on") or {}), name


def test_the_credentials_job_makes_every_file_the_services_and_agents_read(
    config: dict[str, Any], tmp_path: Path
) -> None:
    """The job's own shell command, run here with the volume as a temporary directory."""
    _, job = credentials_job(config)
    entrypoint = [str(a) for a in job.get("entrypoint") or []]
    assert entrypoint[:1] == ["/bin/sh"], entrypoint
    auth = tmp_path / "auth"
    script = " ".join(str(a) for a in job["command"]).replace("/auth", str(auth))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    res = subprocess.run([*entrypoint, script], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (auth / "accounts.conf").is_file()
    for name, s in splice_services(config).items():
        creds = (s.get("environment") or {}).get("SPLICE_CREDS")
        if creds:
            assert Path(str(creds)).is_relative_to("/auth"), (name, creds)
            file = auth / Path(str(creds)).relative_to("/auth")
            assert file.is_file(), f"{name} reads {creds}, which the job does not make"
            # the server's accounts know that principal
            kind, principal = Credentials.load(file).kind, Credentials.load(file).name
            assert (kind, principal) in Registry(auth).principals(), (name, kind, principal)


def test_the_projector_folds_into_postgres_as_a_service(config: dict[str, Any]) -> None:
    projectors = running(config, "projector")
    assert len(projectors) == 1, sorted(config["services"])
    (name, s), = projectors.items()
    command = [str(a) for a in s["command"]]
    db = flag(command, "--db") or str((s.get("environment") or {}).get("SPLICE_READ_DB", ""))
    assert re.match(r"postgres(ql)?://", db), f"{name}: --db {db}"
    pg = [n for n, p in config["services"].items() if str(p.get("image", "")).startswith("postgres:")]
    host = re.sub(r"^[a-z]+://([^@/]*@)?", "", db).split("/")[0].split(":")[0]
    assert [host] == pg, f"{name} reaches {host}, not the postgres service {pg}"
    deps = s.get("depends_on") or {}
    assert deps.get(host, {}).get("condition") == "service_healthy", (name, deps)
    url = flag(command, "--nats-url")
    assert url and set(url.split(",")) == {f"nats://{n}:4222" for n in nats_services(config)}, url
    # the projector is one of the services (account SPLICE), not a tenant or a host
    creds = Path(str((s.get("environment") or {}).get("SPLICE_CREDS")))
    assert creds.name == "service-splice.json", f"{name}: {creds}"
    assert any(creds.is_relative_to(t) for src, t in mounts(s) if src == "splice-auth"), name


def test_an_agent_per_host_privileged_on_the_hosts_network(config: dict[str, Any]) -> None:
    agents = running(config, "agent")
    assert agents, sorted(config["services"])
    _, job = credentials_job(config)
    script = " ".join(str(a) for a in job["command"])
    published = {
        int(str(p).split(":")[-2]) if isinstance(p, str) else int(p["published"])
        for n in nats_services(config).values()
        for p in n.get("ports") or []
    }
    declared = set((config.get("volumes") or {}).keys())
    hosts = set()
    for name, s in agents.items():
        assert s.get("privileged") is True, name
        assert s.get("network_mode") == "host", name
        assert str(s.get("user", "")).split(":")[0] in ("0", "root"), f"{name} must run as root"
        command = [str(a) for a in s["command"]]
        host = flag(command, "--host")
        assert host, f"{name} names no host"
        hosts.add(host)
        # its own host credentials, issued by the credentials job
        creds = str((s.get("environment") or {}).get("SPLICE_CREDS"))
        assert Path(creds).name == f"host-{host}.json", (name, creds)
        assert re.search(rf"credentials issue host {re.escape(host)}\b", script), script
        # on the host's network, NATS is only where compose publishes it
        url = flag(command, "--nats-url")
        assert url, name
        for u in url.split(","):
            m = re.fullmatch(r"nats://127\.0\.0\.1:(\d+)", u)
            assert m and int(m.group(1)) in published, f"{name}: {u} is not a published NATS port"
        state = flag(command, "--state-dir")
        assert state and any(
            src in declared and Path(state).is_relative_to(t) for src, t in mounts(s)
        ), f"{name}: state dir {state} not on a named volume"
    assert len(hosts) == len(agents), f"one agent per host: {hosts}"


def test_postgres_for_read_models(config: dict[str, Any]) -> None:
    pg = [s for s in config["services"].values() if str(s.get("image", "")).startswith("postgres:")]
    assert len(pg) == 1
    assert pg[0]["image"].startswith("postgres:16")
    assert any(src in (config.get("volumes") or {}) for src, _ in mounts(pg[0]))
    assert pg[0].get("healthcheck", {}).get("test")


def test_dockerfile_installs_the_project_with_splice_as_entrypoint() -> None:
    lines = [
        ln.strip()
        for ln in (ROOT / "Dockerfile").read_text().splitlines()
        if ln.strip() and not ln.lstrip().startswith("#")
    ]
    assert lines[0].split() == ["FROM", "python:3.11-slim"], lines[0]
    assert 'ENTRYPOINT ["splice"]' in lines
    assert any(ln.startswith("RUN pip install .") for ln in lines)
    copied = {
        Path(src).as_posix().rstrip("/")
        for ln in lines
        if ln.startswith("COPY ")
        for src in ln.split()[1:-1]
    }
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {"pyproject.toml", *pyproject["tool"]["setuptools"]["package-dir"].values()}
    assert needed <= copied, f"the image misses {needed - copied}"
    ignored = {
        ln.strip().rstrip("/")
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    }
    assert not needed & ignored, f".dockerignore drops {needed & ignored}"
    assert {".git", ".venv"} <= ignored


def test_the_image_has_the_agents_kernel_tools() -> None:
    text = strip_comments((ROOT / "Dockerfile").read_text().replace("\\\n", " "))
    installs = " ".join(ln for ln in text.splitlines() if "apt-get install" in ln).split()
    for package in ("haproxy", "nftables", "iproute2", "conntrack"):
        assert package in installs, f"the image does not install {package}"
