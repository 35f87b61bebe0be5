"""The deployment files agree with the code: docker-compose.yml, Dockerfile, .env.example, .dockerignore.

Docker cannot run here, so these tests read the files and hold them against what the code declares:
the CLI's commands and options, the Celery queues, the settings' fields, the console script, the
health route, the package's files. ``docker compose config`` runs too where the compose plugin is
installed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from fnmatch import fnmatch
from pathlib import Path
from urllib.parse import urlsplit

import click
import pytest
import typer
import yaml
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = ROOT / "pyproject.toml"
LABEL_STUDIO_SCRIPT = ROOT / "scripts" / "labelstudio.sh"

NERLOOP_SERVICES = {"api", "worker-gpu", "worker-cpu", "beat"}  # the ones built from our Dockerfile
# What a deployment with servers must set; the embedded defaults (SQLite, a broker in a file,
# loopback URLs, no token) are for one machine.
DEPLOYMENT_SETTINGS = {
    "NERLOOP_HOME",
    "NERLOOP_DATABASE_URL",
    "NERLOOP_BROKER_URL",
    "NERLOOP_RESULT_BACKEND",
    "NERLOOP_LABEL_STUDIO_URL",
    "NERLOOP_PUBLIC_URL",
    "NERLOOP_API_TOKEN",
    "NERLOOP_WEBHOOK_SECRET",
    "NERLOOP_LABEL_STUDIO_API_KEY",
}
SECRETS = {"NERLOOP_API_TOKEN", "NERLOOP_WEBHOOK_SECRET", "NERLOOP_LABEL_STUDIO_API_KEY", "POSTGRES_PASSWORD"}


# ---- reading the files ----------------------------------------------------------------------------


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as compose reads an env file: comments and blank lines skipped, quotes removed."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name.strip()] = value
    return values


_VARIABLE = re.compile(
    r"\$(?:(?P<dollar>\$)|\{(?P<braced>[A-Za-z_]\w*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<bare>[A-Za-z_]\w*))"
)


def interpolate(value, variables: dict[str, str], used: set[str]):
    """Compose's ${...} interpolation over every string of ``value``, strictly: a variable that is
    neither defined nor given a default is an error (compose would only warn and put "")."""
    if isinstance(value, dict):
        return {key: interpolate(item, variables, used) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, variables, used) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        if match["dollar"]:
            return "$"
        name = match["braced"] or match["bare"]
        used.add(name)
        op, arg, current = match["op"], match["arg"], variables.get(name)
        missing = current is None or (current == "" and op is not None and op.startswith(":"))
        if op in ("-", ":-"):
            return arg if missing else current
        if op in ("+", ":+"):
            return "" if missing else arg
        if missing:
            raise AssertionError(f"${{{name}}} is not set in .env.example{': ' + arg if arg else ''}")
        return current

    return _VARIABLE.sub(substitute, value)


def filled_env_example() -> dict[str, str]:
    """.env.example with its empty values filled in, as an operator's .env would be."""
    return {name: value or f"filled{name.lower().replace('_', '')}" for name, value in read_env_file(ENV_EXAMPLE).items()}


@pytest.fixture(scope="module")
def compose() -> dict:
    raw = yaml.safe_load(COMPOSE.read_text())
    used: set[str] = set()
    document = interpolate({key: value for key, value in raw.items() if not key.startswith("x-")}, filled_env_example(), used)
    document["_variables"] = used
    document["_raw"] = raw
    return document


def dockerfile_instructions() -> list[tuple[str, str]]:
    lines, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        current += " " + stripped[:-1] if stripped.endswith("\\") else " " + stripped
        if not stripped.endswith("\\"):
            lines.append(current.strip())
            current = ""
    assert not current, "Dockerfile ends inside a continued line"
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def instruction(name: str) -> list[str]:
    return [args for kind, args in dockerfile_instructions() if kind == name]


def exec_form(name: str) -> list[str]:
    (args,) = instruction(name)[-1:] or [None]
    assert args is not None, f"Dockerfile has no {name}"
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        raise AssertionError(f"Dockerfile {name} must use the exec (JSON) form, got {args!r}") from None
    assert isinstance(value, list) and all(isinstance(part, str) for part in value)
    return value


def key_values(name: str) -> dict[str, str]:
    """ENV or ARG instructions as a dict (ARG without a default maps to None)."""
    values = {}
    for args in instruction(name):
        for part in shlex.split(args):
            key, sep, value = part.partition("=")
            values[key] = value if sep else None
    return values


def pyproject() -> dict:
    return tomllib.loads(PYPROJECT.read_text())


def container_port(mapping) -> int:
    if isinstance(mapping, dict):
        return int(mapping["target"])
    return int(str(mapping).split("/")[0].rsplit(":", 1)[-1])


def urls_in(values) -> list[str]:
    return re.findall(r"https?://[^'\"\s]+", json.dumps(values))


def service_env(compose: dict, name: str) -> dict[str, str]:
    """The environment a service's container starts with: the image's ENV (ours), env_file, environment."""
    service = compose["services"][name]
    env = dict(key_values("ENV")) if name in NERLOOP_SERVICES else {}
    env_files = service.get("env_file") or []
    for env_file in [env_files] if isinstance(env_files, (str, dict)) else env_files:
        path = env_file["path"] if isinstance(env_file, dict) else env_file
        assert path == ".env", f"{name}: env_file {path!r}; the documented file is .env (from .env.example)"
        env.update(filled_env_example())
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) if "=" in item else (item, "") for item in environment)
    env.update({key: "" if value is None else str(value) for key, value in environment.items()})
    return env


# ---- what the code declares ----------------------------------------------------------------------


def settings_classes() -> list[type]:
    """The settings classes the processes read (workers.config is being merged into service.settings)."""
    from service.settings import Settings

    classes = [Settings]
    try:
        from workers.config import WorkerSettings
    except ImportError:
        pass
    else:
        classes.append(WorkerSettings)
    return classes


def settings_env_names() -> dict[str, tuple[type, str]]:
    names = {}
    for cls in settings_classes():
        prefix = cls.model_config.get("env_prefix", "")
        for field_name, field in cls.model_fields.items():
            alias = field.validation_alias or field.alias
            names[(alias if isinstance(alias, str) else prefix + field_name).upper()] = (cls, field_name)
    return names


def cli_group() -> click.Group:
    from service.cli import app

    return typer.main.get_command(app)


def parse_cli(argv: list[str]) -> tuple[str, dict]:
    """The subcommand and parsed parameters of ``nerloop <argv>``; fails on an unknown command or
    option or a value the option refuses, as the CLI itself would."""
    group = cli_group()
    assert argv, "no subcommand"
    parent = click.Context(group, info_name="nerloop")
    command = group.get_command(parent, argv[0])
    assert command is not None, f"`nerloop {argv[0]}` is not a command; known: {', '.join(group.list_commands(parent))}"
    try:
        context = command.make_context(argv[0], list(argv[1:]), parent=parent)
    except click.UsageError as error:
        raise AssertionError(f"`nerloop {' '.join(argv)}`: {error.format_message()}") from None
    return argv[0], context.params


def service_argv(compose: dict, name: str) -> list[str]:
    command = compose["services"][name].get("command")
    if isinstance(command, str):
        command = shlex.split(command)
    return exec_form("ENTRYPOINT") + (command if command is not None else exec_form("CMD"))


def celery_queues() -> tuple[set[str], set[str]]:
    """(declared queues, queues that tasks are routed to, the default queue included)."""
    from workers.celery_app import app

    declared = {queue.name for queue in app.conf.task_queues}
    routed = {route["queue"] for route in app.conf.task_routes.values()} | {app.conf.task_default_queue}
    return declared, routed


def worker_queues(compose: dict) -> dict[str, set[str]]:
    workers = {}
    for name in NERLOOP_SERVICES:
        command, params = parse_cli(service_argv(compose, name)[1:])
        if command == "worker":
            workers[name] = {queue.strip() for queue in params["queues"].split(",") if queue.strip()}
    return workers


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``path`` (relative, with /) out of the build context: the last
    matching pattern wins, ``!`` re-includes, a pattern matching a folder covers what it holds."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if pattern.startswith("**/"):
            matches = any(fnmatch(part, pattern[3:]) for part in parts) or any(fnmatch(c, pattern[3:]) for c in candidates)
        else:
            matches = any(fnmatch(candidate, pattern) for candidate in candidates)
        if matches:
            ignored = not negate
    return ignored


def dockerignore_patterns() -> list[str]:
    return [line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.strip().startswith("#")]


# ---- the compose file ----------------------------------------------------------------------------


def test_compose_has_every_part_and_our_image_where_expected(compose):
    services = compose["services"]
    assert set(services) >= NERLOOP_SERVICES | {"redis", "postgres", "label-studio", "flower"}
    for name, service in services.items():
        build = service.get("build")
        ours = (
            isinstance(build, dict)
            and (ROOT / build.get("context", ".")).resolve() == ROOT
            and build.get("dockerfile", "Dockerfile") == "Dockerfile"
        )
        assert ours == (name in NERLOOP_SERVICES), f"{name}: built from our Dockerfile: {ours}"
        assert "image" in service, f"{name}: no image"


def test_every_interpolated_variable_is_in_env_example(compose):
    raw_text = COMPOSE.read_text()
    interpolate(yaml.safe_load(raw_text), filled_env_example(), set())  # raises on an undefined ${VAR}
    defaults = {match["braced"] for match in _VARIABLE.finditer(raw_text) if match["op"] in ("-", ":-")}
    assert compose["_variables"] - defaults <= set(read_env_file(ENV_EXAMPLE))


def test_every_command_is_a_real_cli_command(compose):
    scripts = pyproject()["project"]["scripts"]
    for name in NERLOOP_SERVICES:
        argv = service_argv(compose, name)
        assert argv[0] in scripts, f"{name}: runs {argv[0]!r}, not a console script of pyproject ({', '.join(scripts)})"
        parse_cli(argv[1:])
    assert parse_cli(service_argv(compose, "api")[1:])[0] == "serve"
    assert parse_cli(service_argv(compose, "beat")[1:])[0] == "beat"


def test_worker_queues_match_celery(compose):
    from workers.celery_app import CPU, GPU

    declared, routed = celery_queues()
    workers = worker_queues(compose)
    for name, queues in workers.items():
        assert queues and queues <= declared, f"{name}: queues {sorted(queues)}; Celery declares {sorted(declared)}"
    served = set().union(*workers.values())
    assert routed <= served, f"no worker consumes {sorted(routed - served)}"
    assert workers["worker-gpu"] == {GPU}
    assert workers["worker-cpu"] == {CPU}


def test_gpu_worker_reserves_an_nvidia_device_runs_one_process_and_has_a_cuda_build(compose):
    from workers.celery_app import GPU

    def nvidia_devices(service: dict) -> list[dict]:
        devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        return [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])]

    for name, queues in worker_queues(compose).items():
        service = compose["services"][name]
        if GPU in queues:
            assert nvidia_devices(service), f"{name} runs the {GPU} queue without an NVIDIA device reservation"
            assert parse_cli(service_argv(compose, name)[1:])[1]["concurrency"] == 1, f"{name}: one process per accelerator"
            index = service["build"].get("args", {}).get("TORCH_INDEX_URL", "")
            assert re.search(r"/whl/cu\d+/?$", index), f"{name}: TORCH_INDEX_URL {index!r} is not a CUDA index"
            assert service["image"] != compose["services"]["api"]["image"], f"{name}: the CUDA build needs its own tag"
        else:
            assert not nvidia_devices(service), f"{name} reserves a GPU it does not use"


def test_named_volumes_configs_and_dependencies_are_declared(compose):
    services, volumes, configs = compose["services"], compose.get("volumes") or {}, compose.get("configs") or {}
    used_volumes = set()
    for name, service in services.items():
        for mount in service.get("volumes", []):
            source = mount["source"] if isinstance(mount, dict) else mount.split(":")[0]
            if not source.startswith((".", "/", "~")):
                assert source in volumes, f"{name}: volume {source!r} is not declared"
                used_volumes.add(source)
        for config in service.get("configs", []):
            source = config["source"] if isinstance(config, dict) else config
            assert source in configs, f"{name}: config {source!r} is not declared"
        depends = service.get("depends_on") or {}
        for target, condition in (depends.items() if isinstance(depends, dict) else ((d, {}) for d in depends)):
            assert target in services, f"{name} depends on {target!r}, which is no service"
            if condition.get("condition") == "service_healthy":
                assert has_healthcheck(compose, target), f"{name} waits for {target} to be healthy, which has no healthcheck"
    assert used_volumes == set(volumes), f"declared but unused: {sorted(set(volumes) - used_volumes)}"


def has_healthcheck(compose: dict, name: str) -> bool:
    healthcheck = compose["services"][name].get("healthcheck")
    if healthcheck is not None:
        return not healthcheck.get("disable", False) and bool(healthcheck.get("test"))
    return name in NERLOOP_SERVICES and bool(instruction("HEALTHCHECK"))


def test_nerloop_services_wait_for_their_servers(compose):
    for name in NERLOOP_SERVICES:
        depends = compose["services"][name].get("depends_on") or {}
        for server in ("postgres", "redis"):
            assert depends.get(server, {}).get("condition") == "service_healthy", f"{name} must wait for a healthy {server}"


def test_every_nerloop_variable_is_a_settings_field():
    known = settings_env_names()
    for path in (COMPOSE, ENV_EXAMPLE, DOCKERFILE):
        mentioned = set(re.findall(r"\bNERLOOP_[A-Z0-9_]+", path.read_text()))
        unknown = mentioned - set(known)
        assert not unknown, f"{path.name} names {sorted(unknown)}, which no settings class reads; known: {sorted(known)}"


def test_settings_read_from_each_service_environment_point_at_the_right_services(compose, monkeypatch):
    services = compose["services"]
    postgres = services["postgres"]["environment"]
    api_port = parse_cli(service_argv(compose, "api")[1:])[1]["port"]
    ls_port = container_port(services["label-studio"]["ports"][0])
    required = {name for name, (cls, field) in settings_env_names().items() if cls.model_fields[field].is_required()}
    homes = set()
    for name in NERLOOP_SERVICES:
        env = service_env(compose, name)
        missing = (DEPLOYMENT_SETTINGS | required) - {key for key, value in env.items() if value}
        assert not missing, f"{name}: {sorted(missing)} not set"
        for key in [key for key in os.environ if key.startswith("NERLOOP_")]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        loaded = {}
        for cls in settings_classes():  # also validates the JSON values (transport options...)
            loaded.update(cls(_env_file=None).model_dump())

        database = make_url(loaded["database_url"])
        assert database.drivername == "postgresql+psycopg", f"{name}: {database.drivername}"
        assert (database.host, database.port or 5432) == ("postgres", 5432)
        assert (database.username, database.password, database.database) == (
            postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], postgres["POSTGRES_DB"],
        ), f"{name}: the database URL does not match the postgres service's user, password and database"
        for key in ("broker_url", "result_backend"):
            url = urlsplit(loaded[key])
            assert (url.scheme, url.hostname, url.port or 6379) == ("redis", "redis", 6379), f"{name}: {key} {loaded[key]}"
        label_studio = urlsplit(loaded["label_studio_url"])
        assert (label_studio.hostname, label_studio.port) == ("label-studio", ls_port), f"{name}: {loaded['label_studio_url']}"
        public = urlsplit(loaded["public_url"])
        assert (public.hostname, public.port) == ("api", api_port), f"{name}: NERLOOP_PUBLIC_URL must reach the api service"
        homes.add(str(loaded["home"]))

        mounts = {m.split(":")[1]: m.split(":")[0] for m in services[name].get("volumes", []) if isinstance(m, str)}
        assert str(loaded["home"]) in mounts, f"{name}: NERLOOP_HOME {loaded['home']} is not a mounted volume"
    assert len(homes) == 1, f"NERLOOP_HOME differs between services: {homes}"
    (home,) = homes
    sources = {next(m.split(":")[0] for m in services[n]["volumes"] if m.split(":")[1] == home) for n in NERLOOP_SERVICES}
    assert len(sources) == 1, f"api and workers must share one model store volume, got {sources}"
    assert key_values("ENV").get("NERLOOP_HOME") == home, "the image's NERLOOP_HOME differs from compose's"
    assert json.loads(instruction("VOLUME")[-1]) == [home], "the image's VOLUME is not NERLOOP_HOME"


def test_secrets_come_from_env_file_only(compose):
    example = read_env_file(ENV_EXAMPLE)
    for secret in SECRETS:
        assert secret in example, f".env.example lacks {secret}"
        assert example[secret] == "", f".env.example must not ship a value for {secret}"
    raw = compose["_raw"]
    for name, service in raw["services"].items():
        environment = service.get("environment") or {}
        for key in SECRETS & set(environment):
            assert str(environment[key]).startswith("${"), f"{name}: {key} is written into docker-compose.yml"


def test_api_publishes_the_port_it_serves_and_its_healthcheck_asks_the_health_route(compose, tmp_path):
    from service.api import create_app
    from service.settings import Settings

    api = compose["services"]["api"]
    _, params = parse_cli(service_argv(compose, "api")[1:])
    assert params["host"] == "0.0.0.0", "inside a container the API must listen on all interfaces"
    assert params["port"] in {container_port(p) for p in api.get("ports", [])}, "the api publishes another port than it serves"
    expose = {int(port.split("/")[0]) for args in instruction("EXPOSE") for port in args.split()}
    assert params["port"] in expose
    _, image_params = parse_cli(exec_form("CMD"))
    assert image_params["port"] == params["port"]

    client = TestClient(create_app(Settings(home=tmp_path, _env_file=None)))
    for where, check in (("docker-compose.yml", api["healthcheck"]["test"]), ("Dockerfile", instruction("HEALTHCHECK")[-1])):
        (url,) = urls_in(check)
        parts = urlsplit(url)
        assert parts.port == params["port"], f"{where}: the healthcheck asks port {parts.port}"
        assert client.get(parts.path).status_code == 200, f"{where}: the healthcheck asks {parts.path}, which does not answer 200"


def test_label_studio_gets_the_env_it_needs(compose):
    services = compose["services"]
    service = services["label-studio"]
    env = service["environment"]
    version = re.search(r"^LS_VERSION=(\S+)", LABEL_STUDIO_SCRIPT.read_text(), re.M).group(1)
    assert service["image"] == f"heartexlabs/label-studio:{version}", "use the version the tests run (scripts/labelstudio.sh)"
    assert env.get("LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN") == "true"
    assert env.get("SSRF_PROTECTION_ENABLED") == "false"
    assert env.get("ML_BLOCK_LOCAL_IP") == "false"
    for key in ("LABEL_STUDIO_USERNAME", "LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_USER_TOKEN"):
        assert env.get(key), f"label-studio: {key} is empty"
    # Its settings read bare names too: none may reach it.
    assert not {"HOST", "PORT", "USERNAME"} & set(env) and "env_file" not in service
    api_env = service_env(compose, "api")
    assert env["LABEL_STUDIO_USER_TOKEN"] == api_env["NERLOOP_LABEL_STUDIO_API_KEY"], "nerloop must use the token Label Studio creates"

    assert {container_port(p) for p in service["ports"]} == {urlsplit(api_env["NERLOOP_LABEL_STUDIO_URL"]).port}
    (health_url,) = urls_in(service["healthcheck"]["test"])
    assert urlsplit(health_url).port == urlsplit(api_env["NERLOOP_LABEL_STUDIO_URL"]).port
    assert any(m.split(":")[1] == "/label-studio/data" for m in service["volumes"]), "Label Studio's data must be a volume"

    if env.get("DJANGO_DB") == "default":  # PostgreSQL: the compose postgres, its user, a database made for it
        postgres = services["postgres"]
        assert env["POSTGRE_HOST"] == "postgres" and service["depends_on"]["postgres"]["condition"] == "service_healthy"
        credentials = (postgres["environment"]["POSTGRES_USER"], postgres["environment"]["POSTGRES_PASSWORD"])
        assert (env["POSTGRE_USER"], env["POSTGRE_PASSWORD"]) == credentials
        init_sql = " ".join(
            compose["configs"][c["source"]]["content"]
            for c in postgres.get("configs", [])
            if c["target"].startswith("/docker-entrypoint-initdb.d/")
        )
        assert env["POSTGRE_NAME"] != postgres["environment"]["POSTGRES_DB"], "Label Studio needs its own database"
        assert re.search(rf"CREATE DATABASE {re.escape(env['POSTGRE_NAME'])}\b", init_sql), "no init script creates Label Studio's database"


def test_flower_watches_the_broker_on_loopback(compose):
    flower = compose["services"]["flower"]
    assert flower["environment"]["CELERY_BROKER_URL"] == service_env(compose, "worker-cpu")["NERLOOP_BROKER_URL"]
    assert flower["environment"].get("FLOWER_BASIC_AUTH")
    assert all(str(p).startswith("127.0.0.1:") for p in flower["ports"]), "Flower can stop workers: loopback only"


def test_postgres_and_redis_keep_their_data_and_report_health(compose):
    for name, data in (("postgres", "/var/lib/postgresql/data"), ("redis", "/data")):
        service = compose["services"][name]
        assert has_healthcheck(compose, name)
        assert any(m.split(":")[1] == data for m in service["volumes"]), f"{name}: {data} is not a volume"


# ---- the Dockerfile and the build context --------------------------------------------------------


def test_image_runs_the_console_script_as_a_user_that_is_not_root():
    scripts = pyproject()["project"]["scripts"]
    assert exec_form("ENTRYPOINT") == ["nerloop"] and "nerloop" in scripts
    parse_cli(exec_form("CMD"))
    users = instruction("USER")
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must not run as root"


def test_torch_is_pyprojects_pin_from_a_chosen_index():
    (pin,) = [d for d in pyproject()["project"]["dependencies"] if re.match(r"torch\b", d)]
    args = key_values("ARG")
    assert args.get("TORCH_INDEX_URL", "").endswith("/whl/cpu"), "the default build is the CPU one"
    installs = [run for run in instruction("RUN") if re.search(r"\btorch==", run)]
    assert installs, "the Dockerfile does not install torch"
    for run in installs:
        assert pin.replace(" ", "") in run.split() and "${TORCH_INDEX_URL}" in run, (
            f"torch install: {run!r}; expected {pin} from $TORCH_INDEX_URL"
        )
    first_torch = next(i for i, (k, a) in enumerate(dockerfile_instructions()) if k == "RUN" and "torch==" in a)
    first_copy = next(i for i, (k, _) in enumerate(dockerfile_instructions()) if k == "COPY")
    assert first_torch < first_copy, "torch goes in before the sources, so a code change does not reinstall it"


def test_dockerignore_keeps_environments_data_and_secrets_out():
    patterns = dockerignore_patterns()
    for path in (".git", ".venv", ".venv-ls", ".nerloop", "runs", ".env", ".env.production", "service/__pycache__/x.pyc"):
        assert dockerignored(path, patterns), f"{path} would be sent to the Docker daemon"


def copied_sources() -> list[str]:
    sources = []
    for args in instruction("COPY"):
        parts = [p for p in shlex.split(args) if not p.startswith("--")]
        sources += parts[:-1]
    return sources


def test_the_image_gets_every_package_and_what_the_build_needs():
    patterns = dockerignore_patterns()
    sources = copied_sources()
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file"
        assert not dockerignored(source, patterns), f"COPY {source}: .dockerignore leaves it out"
    project = pyproject()
    includes = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.name for p in ROOT.iterdir() if p.is_dir() and any(fnmatch(p.name, pattern) for pattern in includes)}
    assert packages <= set(sources), f"pip install . would miss {sorted(packages - set(sources))}"
    assert {"pyproject.toml", project["project"]["readme"]} <= set(sources)


def test_the_package_built_from_the_image_context_holds_every_source_file(tmp_path):
    """``pip install .`` in the image installs a wheel, not the checkout: a file the wheel lacks
    (a template, static assets) is missing in the container though tests pass in an editable install."""
    patterns = dockerignore_patterns()
    context = tmp_path / "context"
    expected = set()
    for source in copied_sources():
        for path in [ROOT / source] if (ROOT / source).is_file() else sorted((ROOT / source).rglob("*")):
            relative = path.relative_to(ROOT).as_posix()
            if path.is_file() and not dockerignored(relative, patterns):
                (context / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, context / relative)
                if (ROOT / source).is_dir():
                    expected.add(relative)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "wheel"), str(context)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    missing = expected - names
    assert not missing, f"the image's package lacks {sorted(missing)}: add them to [tool.setuptools.package-data]"
    assert re.search(r"^nerloop = service\.cli:app$", entry_points, re.M)


def test_the_api_serves_secured_so_compose_requires_its_secrets(compose):
    """`nerloop serve` refuses to start without the API token and the webhook secret unless told
    --insecure, which is for loopback only (issue 14): the api service serves on every interface, so it
    must not pass --insecure, and compose must refuse to start without the secrets."""
    from service.cli.processes import missing_secrets
    from service.db import init_db
    from service.settings import Settings

    command, options = parse_cli(service_argv(compose, "api")[1:])
    assert command == "serve" and options["host"] == "0.0.0.0" and not options.get("insecure")
    raw = compose["_raw"]["x-nerloop"]["environment"]
    for secret in ("NERLOOP_API_TOKEN", "NERLOOP_WEBHOOK_SECRET"):
        assert raw.get(secret, "").startswith(f"${{{secret}:?"), f"compose does not require {secret}"
    env = service_env(compose, "api")
    settings = Settings(_env_file=None, api_token=env["NERLOOP_API_TOKEN"], webhook_secret=env["NERLOOP_WEBHOOK_SECRET"])
    assert missing_secrets(settings, init_db("sqlite://")) == []
