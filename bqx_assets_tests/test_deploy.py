"""Deployment files: the prod instance config validates; the image's inputs and commands work."""

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config

from bqx_assets.core.costs import JOB

REPO = Path(__file__).resolve().parents[1]
PROD = REPO / "deploy" / "dagster.prod.yaml"
DOCKERFILE = REPO / "Dockerfile"
PROD_ENV = {
    "DAGSTER_PG_USERNAME": "dagster",
    "DAGSTER_PG_PASSWORD": "placeholder",
    "DAGSTER_PG_HOST": "127.0.0.1",
    "DAGSTER_PG_DB": "dagster",
    "DAGSTER_PG_PORT": "5432",
    "BQX_DAGSTER_LOG_BUCKET": "bqx-ml-dagster-logs",
    "BQX_GCP_PROJECT": "bqx-ml",
}
INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
    "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip


def deploy_module(name: str) -> ModuleType:
    """A module of the `deploy` extra (the production instance's classes). The README's test
    command installs it; without it these tests fail, naming the command, rather than skip."""
    try:
        return import_module(name)
    except ImportError as error:
        pytest.fail(
            f"{name} is not installed: it comes with the `deploy` extra, which the README's test "
            f"command installs (uv run --frozen --extra deploy pytest): {error}"
        )


@pytest.fixture
def prod_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    for name, value in PROD_ENV.items():
        monkeypatch.setenv(name, value)
    yield PROD_ENV


def _prod_config(tmp_path: Path) -> dict:
    shutil.copy(PROD, tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))
    return dict(config)


def test_production_instance_config_validates(tmp_path: Path, prod_env: dict[str, str]) -> None:
    config = _prod_config(tmp_path)
    assert set(config["storage"]) == {"postgres"}
    runs = config["concurrency"]["runs"]
    limited = {limit["key"]: limit for limit in runs["tag_concurrency_limits"]}
    # One pair at a time, whether launched alone (dagster/partition) or by a backfill (range).
    for key in ("dagster/partition", "dagster/asset_partition_range_start"):
        assert limited[key]["limit"] == 1
        assert limited[key]["value"] == {"applyLimitPerUniqueValue": True}
    assert runs["max_concurrent_runs"] > 1
    assert config["concurrency"]["pools"]["granularity"] == "op"


def test_every_configurable_class_accepts_its_config(
    tmp_path: Path, prod_env: dict[str, str]
) -> None:
    """Each class named in the file exists and its own schema accepts the config, environment
    variables resolved: what the instance would do at startup, short of connecting."""
    config = _prod_config(tmp_path)
    checked = []
    for section in ("run_coordinator", "run_launcher", "compute_logs"):
        entry = config[section]
        cls = getattr(deploy_module(entry["module"]), entry["class"])
        result = process_config(cls.config_type(), entry.get("config") or {})
        assert result.success, (section, result.errors)
        checked.append(cls.__name__)
    DagsterPostgresStorage = deploy_module("dagster_postgres").DagsterPostgresStorage

    result = process_config(DagsterPostgresStorage.config_type(), config["storage"]["postgres"])
    assert result.success, result.errors
    assert result.value["postgres_db"]["password"] == PROD_ENV["DAGSTER_PG_PASSWORD"]
    assert checked == ["QueuedRunCoordinator", "CloudRunRunLauncher", "GCSComputeLogManager"]


def test_a_dead_run_worker_gives_back_its_pool_slots_and_is_retried(
    tmp_path: Path, prod_env: dict[str, str]
) -> None:
    """A container killed inside a `bigquery` step (OOM, preemption) is failed by run
    monitoring, its pool slot freed, and its run retried: without the freeing, the slot stays
    claimed and the retry waits in the queue for ever (found by the production rehearsal)."""
    config = _prod_config(tmp_path)
    monitoring = config["run_monitoring"]
    assert monitoring["enabled"] and monitoring["poll_interval_seconds"] > 0
    assert 0 < monitoring["free_slots_after_run_end_seconds"] <= monitoring["poll_interval_seconds"]
    assert config["run_retries"]["enabled"] and config["run_retries"]["max_retries"] >= 1


def test_cloud_run_launcher_targets_this_code_location_with_a_long_enough_timeout(
    tmp_path: Path, prod_env: dict[str, str]
) -> None:
    launcher = _prod_config(tmp_path)["run_launcher"]["config"]
    workspace = yaml.safe_load((REPO / "workspace.yaml").read_text())
    locations = {e["python_module"]["location_name"] for e in workspace["load_from"]}
    assert set(launcher["job_name_by_code_location"]) == locations
    # The slowest pair seen took 113 min to extract; a run must not be cut before that.
    assert 2 * 3600 < launcher["run_timeout"] <= 24 * 3600


def test_a_misspelt_field_fails_validation(tmp_path: Path, prod_env: dict[str, str]) -> None:
    text = PROD.read_text().replace("max_concurrent_runs", "max_concurent_runs")
    (tmp_path / "dagster.yaml").write_text(text)
    with pytest.raises(Exception, match="max_concurent_runs"):
        dagster_instance_config(str(tmp_path))


def test_a_missing_credential_fails_at_config_time(
    tmp_path: Path, prod_env: dict[str, str]
) -> None:
    DagsterPostgresStorage = deploy_module("dagster_postgres").DagsterPostgresStorage
    config = _prod_config(tmp_path)
    del os.environ["DAGSTER_PG_HOST"]
    result = process_config(DagsterPostgresStorage.config_type(), config["storage"]["postgres"])
    assert not result.success
    assert "DAGSTER_PG_HOST" in str(result.errors)


@dataclass(frozen=True)
class Instruction:
    line: int
    name: str
    args: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined; comments and blank lines dropped."""
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if not pending:
            start = number
        pending.append(line.removesuffix("\\").strip())
        if line.endswith("\\"):
            continue
        name, _, args = " ".join(pending).partition(" ")
        if name.upper() not in INSTRUCTIONS:
            raise ValueError(f"Dockerfile line {start}: unknown instruction {name!r}")
        out.append(Instruction(start, name.upper(), args.strip()))
        pending = []
    if pending:
        raise ValueError("Dockerfile ends inside a continued instruction")
    return out


def _ignored(path: str, patterns: list[str]) -> bool:
    parts = Path(path).parts
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(parts[0], p) for p in patterns if p)


def _dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


def test_dockerfile_parses_to_a_slim_python_311_image() -> None:
    instructions = _dockerfile()
    assert instructions[0].name == "FROM"
    bases = [i.args.split()[0] for i in instructions if i.name == "FROM"]
    assert bases and all(b.startswith("python:3.11-slim") for b in bases)
    for instruction in instructions:
        if instruction.name in {"CMD", "ENTRYPOINT"}:
            json.loads(instruction.args)  # exec form: signals reach dagster, not a shell
    runs = " ".join(i.args for i in instructions if i.name == "RUN")
    assert "uv sync --frozen --no-dev" in runs
    assert not [i for i in instructions if i.name == "ENTRYPOINT"], (
        "the Cloud Run launcher replaces the arguments; an ENTRYPOINT would prefix them"
    )


def test_every_copied_path_exists_and_is_not_docker_ignored() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copies = [i for i in _dockerfile() if i.name in {"COPY", "ADD"}]
    sources = []
    for copy in copies:
        words = [w for w in shlex.split(copy.args) if not w.startswith("--")]
        if "--from" in copy.args:
            continue  # from another stage
        sources += words[:-1]
    assert "uv.lock" in sources and "bqx_assets" in sources
    for source in sources:
        assert (REPO / source).exists(), source
        assert not _ignored(source, patterns), f"{source} is excluded by .dockerignore"
    assert _ignored(".venv", patterns) and _ignored("data", patterns)


def _cmd() -> list[str]:
    return json.loads(next(i for i in _dockerfile() if i.name == "CMD").args)


@pytest.mark.slow
def test_wheel_installs_with_locked_deps_and_the_image_command_resolves(tmp_path: Path) -> None:
    """What the image does, in a fresh venv: the locked requirements, the wheel (not the source
    tree), the definitions import, and the CMD and run-worker commands parse."""
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH")

    def run(*args: str, cwd: Path = tmp_path, env: dict[str, str] | None = None) -> str:
        done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=900, env=env)
        assert done.returncode == 0, f"{args}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    dist = tmp_path / "dist"
    run(uv, "build", "--wheel", "--out-dir", str(dist), str(REPO), cwd=REPO)
    wheel = next(dist.glob("bqx_assets-*.whl"))
    requirements = tmp_path / "requirements.txt"
    run(uv, "export", "--frozen", "--no-dev", "--extra", "deploy", "--no-emit-project",
        "--no-hashes", "-o", str(requirements), cwd=REPO)  # fmt: skip
    venv = tmp_path / "venv"
    run(uv, "venv", "--python", sys.executable, str(venv))
    python = str(venv / "bin" / "python")
    run(uv, "pip", "install", "--python", python, "-r", str(requirements))
    run(uv, "pip", "install", "--python", python, "--no-deps", str(wheel))

    env = {
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "BQX_ENV": "prod",
        "DAGSTER_HOME": str(tmp_path),
    }
    where = run(python, "-c", "import bqx_assets.definitions as d; print(d.__file__)", env=env)
    assert str(venv) in where, where  # the installed wheel, not the checkout
    cmd = _cmd()
    assert cmd[0] == "dagster"
    run(str(venv / "bin" / cmd[0]), *cmd[1:3], "--help", env=env)
    run(str(venv / "bin" / "dagster"), "api", "execute_run", "--help", env=env)
    listed = run(str(venv / "bin" / "dagster"), "definitions", "validate",
                 *cmd[cmd.index("-m"):cmd.index("-m") + 2], env=env)  # fmt: skip
    assert "error" not in listed.lower()


def _locked_closure(*, extras: tuple[str, ...] = ()) -> set[str]:
    """Package names a `uv sync --frozen --no-dev` (plus `extras`) installs, read from uv.lock."""
    packages: dict[str, list[dict]] = {}
    for package in tomllib.loads((REPO / "uv.lock").read_text())["package"]:
        packages.setdefault(package["name"], []).append(package)
    seen: set[str] = set()
    todo: list[tuple[str, tuple[str, ...]]] = [("bqx-assets", extras)]
    while todo:
        name, wanted = todo.pop()
        for package in packages[name]:
            deps = list(package.get("dependencies", []))
            for extra in wanted:
                deps += package.get("optional-dependencies", {}).get(extra, [])
            for dep in deps:
                if dep["name"] not in seen:
                    seen.add(dep["name"])
                    todo.append((dep["name"], tuple(dep.get("extra", []))))
    return seen


def test_the_runtime_install_leaves_the_deploy_only_packages_out() -> None:
    """dagster-gcp (GCS compute logs of the production instance) and what it drags in (pandas,
    google-api-python-client) come only with the `deploy` extra; numpy, which the core imports,
    is declared."""
    runtime = _locked_closure()
    assert {"dagster-gcp", "pandas", "google-api-python-client"}.isdisjoint(runtime)
    assert {"numpy", "polars", "dagster-polars", "pyarrow"} <= runtime
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert any(d.startswith("numpy") for d in project["dependencies"])
    assert "dagster-gcp" in _locked_closure(extras=("deploy",))


def test_the_image_installs_every_package_the_production_instance_names() -> None:
    """Each module deploy/dagster.prod.yaml loads (and Postgres storage) comes from dagster or
    from the `deploy` extra, and the image installs that extra."""
    config = yaml.safe_load(PROD.read_text())
    modules = [config[s]["module"] for s in ("run_coordinator", "run_launcher", "compute_logs")]
    packages = {m.split(".")[0].replace("_", "-") for m in modules}
    if "postgres" in config["storage"]:
        packages.add("dagster-postgres")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deploy = {d.split("==")[0] for d in project["optional-dependencies"]["deploy"]}
    assert packages - {"dagster"} <= deploy, packages - deploy
    runs = " ".join(i.args for i in _dockerfile() if i.name == "RUN")
    assert runs.count("--extra deploy") == 2


def _gcloud_jobs_create(text: str) -> list[str]:
    """The words of deploy/README.md's `gcloud run jobs create` command, continuations joined."""
    command = re.search(r"^gcloud run jobs create (?:.*\\\n)*.*$", text, re.MULTILINE)
    assert command, "deploy/README.md has no `gcloud run jobs create` command"
    return shlex.split(command.group(0).replace("\\\n", " "))


def _flag(words: list[str], name: str) -> str:
    for i, word in enumerate(words):
        if word == name:
            return words[i + 1]
        if word.startswith(f"{name}="):
            return word.split("=", 1)[1]
    raise AssertionError(f"`gcloud run jobs create` in deploy/README.md has no {name}")


def test_the_job_size_is_defined_once_and_the_deploy_files_repeat_it() -> None:
    """`JOB` (core/costs.py) is the Cloud Run job's size; the README's command creates the job
    with it, and neither deploy file states another size in prose."""
    readme = (REPO / "deploy" / "README.md").read_text()
    words = _gcloud_jobs_create(readme)
    assert float(_flag(words, "--cpu")) == JOB.vcpus
    memory = _flag(words, "--memory")
    assert memory.endswith("Gi"), f"--memory {memory}: give it in Gi, as JOB.memory_gib is"
    assert float(memory.removesuffix("Gi")) == JOB.memory_gib
    sizes = re.compile(r"(\d+(?:\.\d+)?) vCPU\s*/\s*(\d+(?:\.\d+)?) GiB")
    for name, text in (
        ("deploy/README.md", readme),
        ("deploy/dagster.prod.yaml", PROD.read_text()),
    ):
        for vcpus, gib in sizes.findall(text.split("## Kubernetes")[0]):
            assert (float(vcpus), float(gib)) == (JOB.vcpus, JOB.memory_gib), (
                f"{name} says {vcpus} vCPU / {gib} GiB; the job's size is JOB in core/costs.py"
            )
    assert not re.search(r"\d+ ?GiB", PROD.read_text()), "the job's size belongs in core/costs.py"


def test_the_job_size_check_fails_on_a_readme_that_disagrees() -> None:
    readme = (REPO / "deploy" / "README.md").read_text()
    words = _gcloud_jobs_create(readme.replace("--memory 4Gi", "--memory 16Gi"))
    assert float(_flag(words, "--memory").removesuffix("Gi")) != JOB.memory_gib
