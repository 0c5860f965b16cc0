"""The deployment files agree with the code they deploy.

The Dockerfiles, deploy/compose.yaml and the kustomize bases under deploy/k8s are parsed (no
Docker engine or cluster needed) and checked against each service's settings class, its app's
routes and its command line: a misspelt variable, a value the settings refuse, a probe on a
route that does not exist, an autoscaler allowed past the partition count or a service scaled
out while one of its periodic jobs works outside its lease fails here.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import yaml
from fastapi import FastAPI
from pydantic import AliasChoices
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from crm_shared.app.settings import ServiceSettings
from crm_shared.messaging import topics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SERVICES = ("contacts", "lifecycle", "scoring", "notifications")
# Settings that are secrets: never written into a deployment file.
SECRET_SETTINGS = {
    "CRM_AUTH_JWT_SECRET",
    "CRM_UNSUBSCRIBE_SECRET",
    "CRM_WEBHOOK_SECRET",
    "CRM_ERASURE_SECRET",
    "CRM_SMTP_PASSWORD",
}
# The periodic jobs (Runtime.every) of each service. Each run holds a lease on PostgreSQL, so
# replicas take turns; deploy/README.md ("Scaling") says what each job still does per replica.
# A job added here is a row to add there.
PERIODIC_JOBS = {
    "lifecycle": ["sweeper"],
    "scoring": ["refit", "rescore"],
    "notifications": ["dispatcher", "birthdays", "trigger-log"],
}


# --- the services as the code defines them ---


@dataclass(frozen=True)
class Service:
    name: str
    settings: type[ServiceSettings]

    @property
    def port(self) -> int:
        return self.settings.default_port

    @property
    def script(self) -> str:
        return f"crm-{self.name}"

    @property
    def image(self) -> str:
        return f"crm-{self.name}"


@cache
def service(name: str) -> Service:
    module = importlib.import_module(f"{name}.settings")
    return Service(name, cast(type[ServiceSettings], getattr(module, f"{name.title()}Settings")))


def build_app(name: str) -> FastAPI:
    """The service's app with authentication on, built but not started (its database is an
    empty SQLite in memory: nothing migrated)."""
    settings = service(name).settings(
        database_url="sqlite+aiosqlite:///:memory:",
        auth_jwt_secret="a-secret-for-building-the-app-only",
        create_topics=False,
    )
    return cast(FastAPI, importlib.import_module(f"{name}.bootstrap").create_app(settings))


@cache
def app(name: str) -> FastAPI:
    return build_app(name)


def routes(name: str) -> set[str]:
    """The paths the app documents (the probes' routes among them)."""
    return set(app(name).openapi()["paths"])


def runtime_topics(name: str) -> set[str]:
    """Every topic the service's runtime creates when CRM_CREATE_TOPICS is on."""
    return set(app(name).state.runtime._topics)


def periodic_jobs(name: str) -> list[str]:
    return [job for job, _, _ in app(name).state.runtime._periodic]


def env_names(settings: type[ServiceSettings]) -> set[str]:
    """The environment variables the settings class reads (upper case)."""
    prefix = str(settings.model_config.get("env_prefix", ""))
    names = set()
    for name, info in settings.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {choice.upper() for choice in alias.choices if isinstance(choice, str)}
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names.add(f"{prefix}{name}".upper())
    return names


def is_setting_like(variable: str) -> bool:
    return variable.startswith("CRM_") or variable == "DATABASE_URL"


def load_settings(
    settings: type[ServiceSettings], env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch
) -> ServiceSettings:
    """Settings from exactly `env`, after checking every variable names a real setting."""
    unknown = sorted(v for v in env if is_setting_like(v) and v.upper() not in env_names(settings))
    assert not unknown, f"{settings.__name__} has no setting read from {unknown}"
    for variable in list(os.environ):
        if is_setting_like(variable):
            monkeypatch.delenv(variable)
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    return settings()


def has_subcommand(name: str, command: str, capsys: pytest.CaptureFixture[str]) -> bool:
    """Whether `crm-<name> <command>` exists (asked with --help: nothing runs)."""
    cli = importlib.import_module(f"{name}.main").cli
    with pytest.raises(SystemExit) as exited:
        cli([command, "--help"])
    capsys.readouterr()
    return exited.value.code == 0


def load_yaml(path: Path) -> dict[str, Any]:
    return cast(dict[str, Any], yaml.safe_load(path.read_text()))


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [cast(dict[str, Any], d) for d in yaml.safe_load_all(path.read_text()) if d]


# --- Dockerfiles ---


@dataclass(frozen=True)
class Dockerfile:
    args: dict[str, str]
    stages: list[list[tuple[str, str]]]

    @classmethod
    def of(cls, name: str) -> Dockerfile:
        args: dict[str, str] = {}
        stages: list[list[tuple[str, str]]] = []
        for keyword, rest in _instructions((ROOT / "services" / name / "Dockerfile").read_text()):
            if keyword == "FROM":
                stages.append([])
            if keyword == "ARG" and not stages:
                arg, _, default = rest.partition("=")
                args[arg] = default
            if stages:
                stages[-1].append((keyword, rest))
        return cls(args, stages)

    @property
    def final(self) -> list[tuple[str, str]]:
        return self.stages[-1]

    def values(self, keyword: str, stage: Iterable[tuple[str, str]] | None = None) -> list[str]:
        return [rest for k, rest in (self.final if stage is None else stage) if k == keyword]

    def base_image(self, stage: list[tuple[str, str]]) -> str:
        image = stage[0][1].split()[0]
        return re.sub(r"\$\{(\w+)\}", lambda m: self.args[m.group(1)], image)

    def env(self) -> dict[str, str]:
        pairs = [p for rest in self.values("ENV") for p in shlex.split(rest)]
        return dict(pair.split("=", 1) for pair in pairs)


def _instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    found, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        found.append((keyword.upper(), rest.strip()))
        pending = ""
    return found


@pytest.mark.parametrize("name", SERVICES)
def test_each_image_runs_the_service_as_a_numeric_non_root_user(name: str) -> None:
    users = Dockerfile.of(name).values("USER")
    assert users, f"{name}: the runtime stage sets no USER, so it runs as root"
    user = users[-1].split(":")[0]
    # Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert user.isdigit() and int(user) != 0, f"{name}: USER {users[-1]}"


@pytest.mark.parametrize("name", SERVICES)
def test_each_image_exposes_the_service_port_and_checks_health_on_it(name: str) -> None:
    dockerfile = Dockerfile.of(name)
    exposed = {port.split("/")[0] for rest in dockerfile.values("EXPOSE") for port in rest.split()}
    assert exposed == {str(service(name).port)}
    (healthcheck,) = dockerfile.values("HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD ")
    assert "--interval" in options and "--timeout" in options
    probe = json.loads(command)  # exec form: no shell needed in a slim image
    assert probe[:2] == ["python", "-c"] and "urllib" in probe[2]
    urls = re.findall(r"http://(?:127\.0\.0\.1|localhost):(\d+)(/\w+)", probe[2])
    assert urls == [(str(service(name).port), "/healthz")]
    assert "/healthz" in routes(name)


@pytest.mark.parametrize("name", SERVICES)
def test_each_image_listens_on_every_interface_and_serves_by_default(
    name: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    dockerfile = Dockerfile.of(name)
    env = dockerfile.env()
    assert env["CRM_HTTP_HOST"] == "0.0.0.0"
    load_settings(service(name).settings, env, monkeypatch)
    (command,) = dockerfile.values("CMD")
    assert json.loads(command) == [service(name).script, "serve"]
    scripts = tomllib.loads((ROOT / "services" / name / "pyproject.toml").read_text())
    assert scripts["project"]["scripts"][service(name).script] == f"{name}.main:cli"
    assert has_subcommand(name, "serve", capsys)
    assert not has_subcommand(name, "no-such-command", capsys)


@pytest.mark.parametrize("name", SERVICES)
def test_each_image_installs_its_locked_packages_on_the_project_python(name: str) -> None:
    dockerfile = Dockerfile.of(name)
    assert len(dockerfile.stages) >= 2, "a build stage with uv, a runtime stage without it"
    syncs = [
        shlex.split(rest)
        for stage in dockerfile.stages[:-1]
        for keyword, rest in stage
        if keyword == "RUN" and "uv sync" in rest
    ]
    assert syncs
    for sync in syncs:  # the lock as it is, no dev tools, this service and what it needs
        assert {"--frozen", "--no-dev"} <= set(sync) and f"crm-{name}" in sync, sync
        assert sync[sync.index(f"crm-{name}") - 1] == "--package"
    assert not any("uv" in rest.split() for rest in dockerfile.values("RUN"))
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    python = re.search(r">=\s*(\d+\.\d+)", requires)
    assert python is not None
    for stage in dockerfile.stages[1:]:
        assert dockerfile.base_image(stage).startswith(f"python:{python.group(1)}-slim")
    # The build stage copies this service's sources, and no other service's.
    sources = set()
    for rest in dockerfile.values("COPY", dockerfile.stages[-2]):
        *copied, _destination = [t for t in shlex.split(rest) if not t.startswith("--")]
        sources |= {source for source in copied if source.startswith("services/")}
    assert {s for s in sources if s.endswith("/")} == {f"services/{name}/"}


# --- deploy/compose.yaml ---


@cache
def compose() -> dict[str, Any]:
    return load_yaml(DEPLOY / "compose.yaml")


def compose_service(name: str) -> dict[str, Any]:
    return cast(dict[str, Any], compose()["services"][name])


INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: object) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}` with every variable unset;
    a required one gets a placeholder (compose itself would refuse to start)."""

    def one(match: re.Match[str]) -> str:
        if (match.group("op") or "").endswith("?"):
            return f"placeholder-{match.group('name').lower()}"
        return match.group("arg") or ""

    return INTERPOLATION.sub(one, str(value))


def compose_env(name: str) -> dict[str, str]:
    raw = compose_service(name).get("environment", {})
    return {variable: interpolate(value) for variable, value in raw.items()}


def depends_on(name: str) -> dict[str, str]:
    raw = compose_service(name).get("depends_on", {})
    return {other: spec["condition"] for other, spec in raw.items()}


def test_compose_runs_apache_kafka_in_kraft_mode_without_zookeeper() -> None:
    kafka = compose_service("kafka")
    env = {k: str(v) for k, v in kafka["environment"].items()}
    assert kafka["image"].startswith("apache/kafka:")
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert [v.split("@")[0] for v in voters] == [env["KAFKA_NODE_ID"]]
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert f"{controller}://" in env["KAFKA_LISTENERS"]
    assert not any("ZOOKEEPER" in variable for variable in env)
    assert not any("zookeeper" in other for other in compose()["services"])
    # Topics come from init-topics with a fixed partition count, never from auto-creation.
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert kafka["healthcheck"]["test"]
    for name in SERVICES:
        bootstrap = compose_env(name)["CRM_KAFKA_BOOTSTRAP"]
        assert f"://{bootstrap}" in env["KAFKA_ADVERTISED_LISTENERS"], name


def test_compose_gives_each_service_a_postgres_database_and_role_of_its_own() -> None:
    postgres = compose_service("postgres")
    assert postgres["image"].startswith("postgres:")
    assert postgres["healthcheck"]["test"]
    mounts = [m.split(":") for m in postgres["volumes"]]
    scripts = [
        DEPLOY / src for src, dst, *_ in mounts if dst.startswith("/docker-entrypoint-initdb")
    ]
    (script,) = scripts
    loop = re.search(r"^for service in (.+); do$", script.read_text(), re.M)
    assert loop is not None and loop.group(1).split() == list(SERVICES)
    assert "CREATE DATABASE" in script.read_text() and "REVOKE CONNECT" in script.read_text()
    for name in SERVICES:
        for user in (name, f"migrate-{name}"):
            url = compose_env(user)["CRM_DATABASE_URL"]
            match = re.fullmatch(r"postgresql\+asyncpg://(\w+):[^@]+@postgres:5432/(\w+)", url)
            assert match is not None and match.groups() == (name, name), (user, url)


def test_compose_creates_every_topic_the_services_use_before_they_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[tuple[str, list[str], int]] = []

    async def ensure_topics(
        bootstrap: str, names: Iterable[str], *, partitions: int, replication: int = 1
    ) -> list[str]:
        calls.append((bootstrap, list(names), partitions))
        return []

    job = compose_service("init-topics")
    assert job["command"][:2] == ["python", "-c"]
    load_settings(ServiceSettings, compose_env("init-topics"), monkeypatch)
    monkeypatch.setattr(topics, "ensure_topics", ensure_topics)
    exec(compile(job["command"][2], "init-topics", "exec"), {})
    capsys.readouterr()
    ((bootstrap, created, partitions),) = calls
    assert depends_on("init-topics") == {"kafka": "service_healthy"}
    for name in SERVICES:
        env = compose_env(name)
        assert runtime_topics(name) <= set(created), name
        assert (bootstrap, partitions) == (
            env["CRM_KAFKA_BOOTSTRAP"],
            int(env["CRM_TOPIC_PARTITIONS"]),
        )
        assert depends_on(name)["init-topics"] == "service_completed_successfully"


@pytest.mark.parametrize("name", SERVICES)
def test_compose_migrates_each_database_before_its_service_starts(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    job = compose_service(f"migrate-{name}")
    assert job["command"] == [service(name).script, "migrate"]
    assert has_subcommand(name, "migrate", capsys)
    assert job["image"] == compose_service(name)["image"]
    assert depends_on(f"migrate-{name}") == {"postgres": "service_healthy"}
    assert depends_on(name)[f"migrate-{name}"] == "service_completed_successfully"
    assert compose_env(name)["CRM_MIGRATE_ON_START"] == "false"


@pytest.mark.parametrize("name", SERVICES)
def test_compose_sets_only_real_settings_with_values_they_accept(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = load_settings(service(name).settings, compose_env(f"migrate-{name}"), monkeypatch)
    settings = load_settings(service(name).settings, compose_env(name), monkeypatch)
    assert settings.database_url == job.database_url and settings.database_url.endswith(name)
    assert not settings.auth_disabled
    assert settings.auth_jwt_secret == "placeholder-crm_auth_jwt_secret"


@pytest.mark.parametrize("name", SERVICES)
def test_compose_takes_secrets_from_variables_it_requires(name: str) -> None:
    raw = compose_service(name)["environment"]
    present = SECRET_SETTINGS & set(raw)
    assert "CRM_AUTH_JWT_SECRET" in present
    for variable in present:
        assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", raw[variable]), f"{name}: {variable}"
    password = re.search(r"://\w+:([^@]+)@", raw["CRM_DATABASE_URL"])
    assert password is not None and re.fullmatch(r"\$\{\w+:\?[^}]+\}", password.group(1))


@pytest.mark.parametrize("name", SERVICES)
def test_compose_builds_the_service_image_and_publishes_its_port(name: str) -> None:
    spec = compose_service(name)
    build = spec["build"]
    dockerfile = (DEPLOY / build["context"] / build["dockerfile"]).resolve()
    assert dockerfile == ROOT / "services" / name / "Dockerfile"
    published = [interpolate(port).rsplit(":", 1)[-1] for port in spec["ports"]]
    assert published == [str(service(name).port)]
    assert depends_on(name)["kafka"] == depends_on(name)["postgres"] == "service_healthy"


# --- deploy/k8s (kustomize) ---


@dataclass
class Base:
    """A kustomization's resources and generated ConfigMaps, read as kustomize would."""

    directory: Path
    objects: list[dict[str, Any]] = field(default_factory=list)
    config_maps: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def of(cls, directory: Path) -> Base:
        kustomization = load_yaml(directory / "kustomization.yaml")
        base = cls(directory)
        for entry in kustomization.get("resources", []):
            path = directory / entry
            assert path.exists(), f"{directory}/kustomization.yaml lists missing {entry}"
            if path.is_dir():
                inner = cls.of(path)
                base.objects += inner.objects
                base.config_maps |= inner.config_maps
            else:
                base.objects += load_yaml_documents(path)
        for generator in kustomization.get("configMapGenerator", []):
            literals = [str(item).split("=", 1) for item in generator.get("literals", [])]
            base.config_maps[generator["name"]] = dict(literals)
        return base

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        (found,) = self.all(kind)
        return found


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return cast(dict[str, Any], workload["spec"]["template"]["spec"])


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod_spec(workload)["containers"]
    return cast(dict[str, Any], only)


def k8s_env(base: Base, workload: dict[str, Any]) -> dict[str, str]:
    """The environment a workload's container gets: its ConfigMaps, then its own `env`
    (a Secret's value replaced by a placeholder)."""
    env: dict[str, str] = {}
    spec = container(workload)
    for source in spec.get("envFrom", []):
        env |= base.config_maps[source["configMapRef"]["name"]]
    for item in spec.get("env", []):
        secret = item.get("valueFrom", {}).get("secretKeyRef")
        env[item["name"]] = f"placeholder-{secret['key']}" if secret else str(item["value"])
    return env


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_the_top_level_kustomization_deploys_every_service() -> None:
    top = load_yaml(K8S / "kustomization.yaml")
    assert set(SERVICES) <= set(top["resources"])
    assert top["namespace"]
    deployments = {d["metadata"]["name"] for d in Base.of(K8S).all("Deployment")}
    assert deployments == {service(name).image for name in SERVICES}
    assert {image["name"] for image in top["images"]} == deployments


@pytest.mark.parametrize("name", SERVICES)
def test_k8s_sets_only_real_settings_with_values_they_accept(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = Base.of(K8S / name)
    for workload in (base.one("Deployment"), base.one("Job")):
        settings = load_settings(service(name).settings, k8s_env(base, workload), monkeypatch)
        assert settings.database_url == "placeholder-database-url"
    deployment_env = k8s_env(base, base.one("Deployment"))
    assert deployment_env["CRM_HTTP_HOST"] == "0.0.0.0"
    assert deployment_env["CRM_AUTH_JWT_SECRET"] == "placeholder-jwt-secret"
    secret_values = SECRET_SETTINGS & set(base.config_maps[f"crm-{name}-config"])
    assert not secret_values, f"secrets in a ConfigMap: {secret_values}"


@pytest.mark.parametrize("name", SERVICES)
def test_consumers_let_apache_kafka_hold_their_fetches(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Apache Kafka answers a fetch when a record arrives, so a long wait costs no latency;
    the short default is for the embedded broker, which holds every fetch for all of it."""
    base = Base.of(K8S / name)
    environments = {
        "compose": compose_env(name),
        "k8s": k8s_env(base, base.one("Deployment")),
    }
    for where, env in environments.items():
        settings = load_settings(service(name).settings, env, monkeypatch)
        assert settings.fetch_max_wait_ms >= 500, where
        assert settings.fetch_idle_wait_ms >= settings.fetch_max_wait_ms, where


@pytest.mark.parametrize("name", SERVICES)
async def test_probes_ask_real_routes_on_the_service_port_without_a_token(name: str) -> None:
    spec = container(Base.of(K8S / name).one("Deployment"))
    ports = {p["name"]: p["containerPort"] for p in spec["ports"]}
    assert list(ports.values()) == [service(name).port]
    expected = {
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
        "startupProbe": "/healthz",
    }
    transport = httpx.ASGITransport(app=app(name))  # the app is not started: no broker
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://probe") as client:
            for probe, path in expected.items():
                get = spec[probe]["httpGet"]
                assert get["path"] == path and path in routes(name)
                assert ports.get(get["port"], get["port"]) == service(name).port
                # Probes carry no token: they must never get 401/403 (/readyz: 503 here).
                assert (await client.get(path)).status_code in (200, 503), (name, path)
    finally:
        await app(name).state.runtime.db.dispose()


Lease = Callable[[str], AbstractAsyncContextManager[bool]]


def lease_that(granted: bool, asked: list[str]) -> Lease:
    """A stand-in for `Runtime._lease`: records the job it is asked for, grants or refuses."""

    @asynccontextmanager
    async def lease(job: str) -> AsyncIterator[bool]:
        asked.append(job)
        yield granted

    return lease


@pytest.mark.parametrize("name", SERVICES)
async def test_every_periodic_job_works_only_while_its_replica_holds_the_jobs_lease(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert periodic_jobs(name) == PERIODIC_JOBS.get(name, [])
    for granted in (False, True):
        runtime = build_app(name).state.runtime
        asked: list[str] = []
        connections: list[object] = []
        monkeypatch.setattr(runtime, "_lease", lease_that(granted, asked))
        event.listen(runtime.db.engine.sync_engine, "engine_connect", connections.append)
        try:
            for job, _, run in runtime._periodic:
                asked.clear()
                connections.clear()
                # Granted, the job reaches the database (and fails there: nothing is migrated).
                with contextlib.suppress(SQLAlchemyError):
                    await run()
                assert asked == [job], (name, job)
                assert bool(connections) is granted, (name, job, granted)
        finally:
            await runtime.db.dispose()


def most_pods_at_once(base: Base) -> int:
    """How many pods of the Deployment may run at once: its autoscaler's maximum (or its
    fixed count), one more while a rolling update surges."""
    spec = base.one("Deployment")["spec"]
    hpas = base.all("HorizontalPodAutoscaler")
    most = max([h["spec"]["maxReplicas"] for h in hpas] or [spec.get("replicas", 1)])
    strategy = spec.get("strategy", {})
    surge = strategy.get("rollingUpdate", {}).get("maxSurge", "25%")
    return int(most) + (0 if strategy.get("type") == "Recreate" or surge in (0, "0%") else 1)


@pytest.mark.parametrize("name", SERVICES)
def test_a_service_runs_several_pods_only_where_its_leases_hold(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = Base.of(K8S / name)
    if most_pods_at_once(base) == 1:
        return
    # Leases are PostgreSQL advisory locks: on SQLite `_lease` always grants.
    examples = load_yaml_documents(K8S / "secrets.example.yaml")
    secret = {d["metadata"]["name"]: d["stringData"] for d in examples}[f"crm-{name}"]
    assert make_url(secret["database-url"]).get_backend_name() == "postgresql", name
    # The event-time clock is each process's latest event time, and in lifecycle every
    # consumed batch moves the customers whose silence is due: work outside any lease.
    env = k8s_env(base, base.one("Deployment"))
    settings = load_settings(service(name).settings, env, monkeypatch)
    assert getattr(settings, "clock", "wall") == "wall", name


@pytest.mark.parametrize("name", SERVICES)
def test_no_autoscaler_adds_consumers_beyond_the_partition_count(name: str) -> None:
    base = Base.of(K8S / name)
    deployment = base.one("Deployment")
    partitions = int(k8s_env(base, deployment)["CRM_TOPIC_PARTITIONS"])
    spec = base.one("HorizontalPodAutoscaler")["spec"]
    assert spec["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert 1 <= spec["minReplicas"] <= spec["maxReplicas"] <= partitions
    # The autoscaler owns the count: a fixed one would be reset on every apply.
    assert "replicas" not in deployment["spec"]
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"


@pytest.mark.parametrize("name", SERVICES)
def test_the_disruption_budget_lets_nodes_drain_at_the_autoscalers_minimum(name: str) -> None:
    base = Base.of(K8S / name)
    least = base.one("HorizontalPodAutoscaler")["spec"]["minReplicas"]
    budget = base.one("PodDisruptionBudget")["spec"]
    (bound,) = {"minAvailable", "maxUnavailable"} & set(budget)
    assert isinstance(budget[bound], int), "a count, not a percentage"
    evictable = least - budget[bound] if bound == "minAvailable" else budget[bound]
    # At the minimum one pod can still be evicted; with two or more, not all of them at once.
    assert 1 <= evictable and (least == 1 or evictable < least), (name, least, budget)


@pytest.mark.parametrize("name", SERVICES)
def test_the_migration_job_runs_the_migrate_command_of_the_service_image(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    base = Base.of(K8S / name)
    job = base.one("Job")
    spec = container(job)
    assert spec["command"] == [service(name).script, "migrate"]
    assert has_subcommand(name, "migrate", capsys)
    assert spec["image"] == container(base.one("Deployment"))["image"] == service(name).image
    assert pod_spec(job)["restartPolicy"] in ("Never", "OnFailure")
    assert container(base.one("Deployment"))["command"] == [service(name).script, "serve"]


@pytest.mark.parametrize("name", SERVICES)
def test_pods_run_as_non_root_with_requests_and_limits(name: str) -> None:
    base = Base.of(K8S / name)
    for workload in (base.one("Deployment"), base.one("Job")):
        pod = pod_spec(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False
        spec = container(workload)
        assert spec["securityContext"]["allowPrivilegeEscalation"] is False
        assert spec["securityContext"]["capabilities"]["drop"] == ["ALL"]
        for bound in ("requests", "limits"):
            assert set(spec["resources"][bound]) == {"cpu", "memory"}, (name, bound)


@pytest.mark.parametrize("name", SERVICES)
def test_the_service_and_budget_select_the_api_pods_and_not_the_migration_pods(
    name: str,
) -> None:
    base = Base.of(K8S / name)
    api_pods = base.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    job_pods = base.one("Job")["spec"]["template"]["metadata"]["labels"]
    service_spec = base.one("Service")["spec"]
    budget = base.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    for selector in (service_spec["selector"], budget):
        assert selects(selector, api_pods) and not selects(selector, job_pods)
    (port,) = service_spec["ports"]
    assert port["port"] == service(name).port
    assert port["targetPort"] in {p["name"] for p in container(base.one("Deployment"))["ports"]}


def test_every_secret_a_pod_needs_is_in_the_example_and_the_example_is_never_applied() -> None:
    example = {
        doc["metadata"]["name"]: set(doc["stringData"])
        for doc in load_yaml_documents(K8S / "secrets.example.yaml")
    }
    needed = set()
    for workload in Base.of(K8S).all("Deployment") + Base.of(K8S).all("Job"):
        for item in container(workload).get("env", []):
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref and not ref.get("optional"):
                needed.add((ref["name"], ref["key"]))
    assert needed and all(key in example.get(secret, set()) for secret, key in needed), needed
    kustomizations = K8S.rglob("kustomization.yaml")
    assert not any("secrets.example" in path.read_text() for path in kustomizations)


@pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (with kustomize) not installed"
)
def test_kustomize_builds_the_whole_platform() -> None:
    built = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False
    )
    assert built.returncode == 0, built.stderr
    kinds = [doc["kind"] for doc in yaml.safe_load_all(built.stdout) if doc]
    assert kinds.count("Deployment") == kinds.count("Job") == len(SERVICES)
    assert kinds.count("HorizontalPodAutoscaler") == len(SERVICES) and "Namespace" in kinds
