"""docker-compose.yml, checked without a Docker engine: it follows the Compose
Specification's JSON schema, every oppflow container runs a real `oppflow` command with
settings the code reads, services start in a safe order, images are pinned, and the
namespace job's script works against a real Temporal server."""

from __future__ import annotations

import asyncio
import copy
import json
import re
import subprocess
import sys
import tomllib
import uuid
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import typer.main
import yaml
from pydantic_settings import BaseSettings
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.testing import WorkflowEnvironment
from typer.core import TyperGroup

from starter import codec, observability, settings
from starter.cli import app
from starter.temporal_server import temporal_binary
from tests.worker_process import clean_env, temporal_address

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"

# Temporal's client variables (temporalio.envconfig) that oppflow passes through untouched.
TEMPORAL_CLIENT_VARIABLES = {
    "TEMPORAL_ADDRESS",
    "TEMPORAL_NAMESPACE",
    "TEMPORAL_API_KEY",
    "TEMPORAL_PROFILE",
    "TEMPORAL_CONFIG_FILE",
    "TEMPORAL_TLS",
    "TEMPORAL_TLS_SERVER_NAME",
    "TEMPORAL_TLS_DISABLE_HOST_VERIFICATION",
    "TEMPORAL_TLS_SERVER_CA_CERT_PATH",
    "TEMPORAL_TLS_SERVER_CA_CERT_DATA",
    "TEMPORAL_TLS_CLIENT_CERT_PATH",
    "TEMPORAL_TLS_CLIENT_CERT_DATA",
    "TEMPORAL_TLS_CLIENT_KEY_PATH",
    "TEMPORAL_TLS_CLIENT_KEY_DATA",
}
ONE_SHOT_JOBS = {"temporal-schema", "temporal-namespace", "oppflow-migrate", "oppflow-setup-temporal"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def compose_schema() -> dict[str, Any]:
    # The Compose Specification's schema as vendored by check-jsonschema.
    vendored = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return json.loads(vendored.read_text())


def oppflow_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if s.get("image", "").startswith("oppflow:")}


def variables_the_code_reads() -> set[str]:
    names = {"DATABASE_URL", *TEMPORAL_CLIENT_VARIABLES}
    for model in (settings.Settings, codec.CodecSettings, observability.ObservabilitySettings):
        assert issubclass(model, BaseSettings)
        prefix = model.model_config.get("env_prefix", "")
        for field_name in model.model_fields:
            names.add(f"{prefix}{field_name}".upper())
    return names


def test_the_file_follows_the_compose_specification(
    compose: dict[str, Any], compose_schema: dict[str, Any]
) -> None:
    validator_class = jsonschema.validators.validator_for(compose_schema)
    validator_class.check_schema(compose_schema)
    errors = sorted(validator_class(compose_schema).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)

    broken = copy.deepcopy(compose)
    broken["services"]["oppflow-worker"]["depends_on"]["temporal"]["condition"] = "service_started_eventually"
    broken["services"]["oppflow-worker"]["deploy"]["replicas"] = "two"
    assert len(list(validator_class(compose_schema).iter_errors(broken))) == 2


def test_every_oppflow_container_runs_a_real_command(compose: dict[str, Any]) -> None:
    cli = typer.main.get_command(app)
    services = oppflow_services(compose)
    assert set(services) == {
        "oppflow-migrate",
        "oppflow-setup-temporal",
        "oppflow-worker",
        "oppflow-api",
        "oppflow-codec",
    }
    for name, service in services.items():
        args = list(service["command"])
        command = cli
        while isinstance(command, TyperGroup) and args and args[0] in command.commands:
            command = command.commands[args.pop(0)]
        assert not isinstance(command, TyperGroup), (
            f"{name}: `oppflow {' '.join(service['command'])}` is a group"
        )
        command.make_context(f"oppflow {name}", args)  # raises on an unknown option or argument


def test_oppflow_containers_set_only_variables_the_code_reads(compose: dict[str, Any]) -> None:
    known = variables_the_code_reads()
    for name, service in oppflow_services(compose).items():
        unknown = set(service.get("environment", {})) - known
        assert not unknown, f"{name} sets variables nothing reads: {sorted(unknown)}"
    worker = compose["services"]["oppflow-worker"]["environment"]
    assert {"DATABASE_URL", "TEMPORAL_ADDRESS", "OPPFLOW_TASK_QUEUE", "OPPFLOW_METRICS_PORT"} <= set(worker)


def depends(compose: dict[str, Any], service: str) -> dict[str, str]:
    return {
        name: spec["condition"] for name, spec in compose["services"][service].get("depends_on", {}).items()
    }


def test_services_start_in_a_safe_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in services:
        assert set(depends(compose, name)) <= set(services), f"{name} depends on an unknown service"
    assert depends(compose, "temporal-schema") == {"temporal-db": "service_healthy"}
    assert depends(compose, "temporal") == {"temporal-schema": "service_completed_successfully"}
    assert depends(compose, "temporal-namespace") == {"temporal": "service_healthy"}
    assert depends(compose, "oppflow-migrate") == {"oppflow-db": "service_healthy"}
    assert depends(compose, "oppflow-setup-temporal") == {
        "temporal-namespace": "service_completed_successfully"
    }
    for app_service in ("oppflow-worker", "oppflow-api"):
        assert depends(compose, app_service) == {
            "temporal": "service_healthy",
            "oppflow-migrate": "service_completed_successfully",
            "oppflow-setup-temporal": "service_completed_successfully",
        }
    for name, service in services.items():
        if name in ONE_SHOT_JOBS:
            assert str(service.get("restart", "")).startswith("on-failure"), name
            assert "ports" not in service and "healthcheck" not in service, name
        elif name != "temporal-ui":
            assert service["healthcheck"]["test"], f"{name} has no health check"
    worker = services["oppflow-worker"]
    assert "container_name" not in worker and "ports" not in worker  # so it scales


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = service["image"]
        assert re.fullmatch(r"[\w./-]+:\d+(\.\d+)+[\w.-]*", image), (
            f"{name}: {image} is not pinned to a version"
        )
    repositories = {s["image"].split(":")[0] for s in compose["services"].values()}
    assert {"temporalio/server", "temporalio/admin-tools", "temporalio/ui"} <= repositories
    assert "temporalio/auto-setup" not in repositories  # deprecated
    server = compose["services"]["temporal"]["image"].split(":")[1]
    admin = compose["services"]["temporal-schema"]["image"].split(":")[1]
    assert server == admin, "schema tool and server versions must match"
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert {s["image"] for s in oppflow_services(compose).values()} == {f"oppflow:{version}"}


def test_mounted_files_and_scripts_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
    for script in (ROOT / "deploy" / "temporal").glob("*.sh"):
        subprocess.run(["sh", "-n", str(script)], check=True)
    dynamic = yaml.safe_load((ROOT / "deploy/temporal/dynamicconfig/oppflow.yaml").read_text())
    assert all(isinstance(v, list) and "value" in v[0] for v in dynamic.values())
    server_env = compose["services"]["temporal"]["environment"]
    assert server_env["DYNAMIC_CONFIG_FILE_PATH"].endswith("/oppflow.yaml")


def test_the_dockerfile_copies_the_packages_it_installs() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = {
        part for line in dockerfile.splitlines() if line.startswith("COPY ") for part in line.split()[1:-1]
    }
    assert all((ROOT / path).exists() for path in copied), copied
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    modules = {f"{m}.py" for m in pyproject["tool"]["setuptools"]["py-modules"]}
    assert packages | modules <= copied
    assert 'ENTRYPOINT ["oppflow"]' in dockerfile


def run_script(script: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=120)


async def test_the_namespace_job_creates_the_namespace_once(temporal_env: WorkflowEnvironment) -> None:
    namespace = f"compose-{uuid.uuid4().hex[:8]}"
    env = clean_env(
        TEMPORAL_ADDRESS=temporal_address(temporal_env.client),
        TEMPORAL_NAMESPACE=namespace,
        TEMPORAL_RETENTION="7d",
        PATH=f"{Path(temporal_binary()).parent}:/usr/bin:/bin",
    )
    script = ROOT / "deploy/temporal/create-namespace.sh"
    first = await asyncio.to_thread(run_script, script, env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"created {namespace}" in first.stdout
    described = await temporal_env.client.workflow_service.describe_namespace(
        DescribeNamespaceRequest(namespace=namespace)
    )
    assert described.config.workflow_execution_retention_ttl.seconds == 7 * 86400

    again = await asyncio.to_thread(run_script, script, env)
    assert again.returncode == 0 and f"{namespace} exists" in again.stdout, again.stdout + again.stderr


@pytest.mark.slow
async def test_the_installed_package_migrates_a_database(postgres_url: str, tmp_path: Path) -> None:
    """What the image does: `pip install .` (no editable source tree), then `oppflow migrate`."""
    target = tmp_path / "site"
    install = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr
    env = clean_env(PYTHONPATH=str(target), DATABASE_URL=postgres_url)
    where = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", "import db.migrate; print(db.migrate.__file__)"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.stdout.startswith(str(target)), where.stdout + where.stderr
    migrate = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", "from starter.cli import main; main()", "migrate"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    assert "database at the latest migration" in migrate.stdout
