"""The rehearsal's run launcher: each run one `dagster api execute_run` process, as Cloud Run runs
it, in a memory cgroup of the job's size where the machine lets it set one."""

# Dagster's DefaultRunLauncher asks the code server to start the run worker, so the worker is the
# code server's child and DefaultRunLauncher cannot report its health (supports_check_run_worker
# _health is False): run monitoring would never see a worker that was SIGKILLed or killed by its
# memory limit. The production launcher (CloudRunRunLauncher) starts `dagster api execute_run
# <args>` in a container of its own and reports the container's state; this one starts the same
# command as a process of its own and reports the process's state, so everything above the
# launcher (queue, tag limits, pools, monitoring, retries) runs as in production.
#
# The cgroup (v1 memory controller, /sys/fs/cgroup/memory) is entered before exec, so every byte
# of the worker and of its step processes is charged to it, with the run's tmpfs writes (see
# https://docs.kernel.org/admin-guide/cgroup-v1/memory.html: "shmem/tmpfs pages are charged to
# the cgroup of the process that faults them in").

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, WorkerStatus
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import ConfigurableClassData

CGROUP_ROOT = Path("/sys/fs/cgroup/memory")
PID_TAG = "bqx/rehearsal_pid"
CGROUP_TAG = "bqx/rehearsal_cgroup"
LIMIT_TAG = "bqx/rehearsal_memory_limit_bytes"
"""A run's own memory limit, below the job's (the out-of-memory rehearsal)."""


def run_cgroup(parent: str, run_id: str) -> Path:
    return CGROUP_ROOT / parent / run_id


def cgroup_usable(parent: str) -> str | None:
    """None when a memory limit can be set under CGROUP_ROOT/parent, else why not."""
    probe = CGROUP_ROOT / parent / "probe"
    try:
        probe.mkdir(parents=True, exist_ok=True)
        (probe / "memory.limit_in_bytes").write_text(str(64 * 2**20))
        probe.rmdir()
    except OSError as error:
        return f"cannot set a memory limit under {CGROUP_ROOT / parent}: {error}"
    return None


def cgroup_figures(path: Path) -> dict[str, int]:
    """The cgroup's peak usage, limit and OOM kills (memory.max_usage_in_bytes counts RSS and
    the page cache, tmpfs included, as Cloud Run's limit does)."""
    figures = {
        "peak_bytes": int((path / "memory.max_usage_in_bytes").read_text()),
        "limit_bytes": int((path / "memory.limit_in_bytes").read_text()),
    }
    for line in (path / "memory.oom_control").read_text().splitlines():
        name, _, value = line.partition(" ")
        if name == "oom_kill":
            figures["oom_kills"] = int(value)
    stat = dict(line.split() for line in (path / "memory.stat").read_text().splitlines())
    figures["peak_rss_bytes_now"] = int(stat.get("rss", 0))
    return figures


class CgroupRunLauncher(dg.DefaultRunLauncher):
    """A DefaultRunLauncher whose runs are processes it starts itself, each in a memory cgroup
    of `memory_limit_bytes` (0: no cgroup) under `cgroup_parent`."""

    def __init__(
        self,
        memory_limit_bytes: int = 0,
        cgroup_parent: str = "bqx-rehearsal",
        inst_data: ConfigurableClassData | None = None,
    ) -> None:
        super().__init__(inst_data=inst_data)
        self._limit = memory_limit_bytes
        self._parent = cgroup_parent
        self._workers: dict[str, subprocess.Popen[bytes]] = {}

    @classmethod
    def config_type(cls) -> Any:
        return {
            "memory_limit_bytes": dg.Field(int, is_required=False, default_value=0),
            "cgroup_parent": dg.Field(str, is_required=False, default_value="bqx-rehearsal"),
        }

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: dict[str, Any]
    ) -> CgroupRunLauncher:
        return cls(inst_data=inst_data, **config_value)

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        origin = run.job_code_origin
        assert origin is not None, f"run {run.run_id} has no code origin"
        args = ExecuteRunArgs(
            job_origin=origin, run_id=run.run_id, instance_ref=self._instance.get_ref()
        ).get_command_args()
        # A memory limit on a run its tags ask for (the out-of-memory rehearsal), else the job's.
        limit = int(run.tags.get(LIMIT_TAG, self._limit))
        cgroup = run_cgroup(self._parent, run.run_id) if limit else None
        if cgroup is not None:
            cgroup.mkdir(parents=True, exist_ok=True)
            (cgroup / "memory.limit_in_bytes").write_text(str(limit))
        tasks = None if cgroup is None else str(cgroup / "cgroup.procs")

        def enter_cgroup() -> None:
            if tasks is not None:
                with open(tasks, "w") as f:
                    f.write(str(os.getpid()))

        log = Path(os.environ.get("DAGSTER_HOME", ".")) / f"run-{run.run_id}.log"
        with log.open("ab") as out:
            worker = subprocess.Popen(
                list(args),
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=enter_cgroup,
                start_new_session=True,  # its own process group: killed whole, as a container
            )
        self._workers[run.run_id] = worker
        tags = {PID_TAG: str(worker.pid)}
        if cgroup is not None:
            tags[CGROUP_TAG] = str(cgroup)
        self._instance.add_run_tags(run.run_id, tags)

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def _exit(self, run: dg.DagsterRun) -> tuple[bool, int | None]:
        """(alive, exit code if known) of the run's worker."""
        worker = self._workers.get(run.run_id)
        if worker is not None:
            code = worker.poll()
            return code is None, code
        pid = run.tags.get(PID_TAG)
        if pid is None:
            return False, None
        try:  # a worker launched by an earlier daemon: its /proc entry, zombies counted dead
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, IndexError):
            return False, None
        return state not in {"Z", "X"}, None

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        if PID_TAG not in run.tags:
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, "not started yet")
        alive, code = self._exit(run)
        if alive:
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        why = f"run worker (pid {run.tags[PID_TAG]}) exited"
        if code is not None:
            why += f" with {code}" + (f" (signal {-code})" if code < 0 else "")
        cgroup = run.tags.get(CGROUP_TAG)
        if cgroup and Path(cgroup).exists():
            figures = cgroup_figures(Path(cgroup))
            limit_gib = figures["limit_bytes"] / 2**30
            if figures.get("oom_kills"):
                why = (
                    f"killed by its memory limit: the run's container holds {limit_gib:.2f} GiB "
                    f"and the run reached {figures['peak_bytes'] / 2**30:.2f} GiB "
                    f"({figures['oom_kills']} process(es) OOM-killed); {why}"
                )
        return CheckRunHealthResult(WorkerStatus.FAILED, why)

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if run is None or PID_TAG not in run.tags:
            return False
        self._instance.report_run_canceling(run)
        try:
            os.killpg(int(run.tags[PID_TAG]), signal.SIGTERM)
        except ProcessLookupError:
            return False
        return True

    def join(self, timeout: int = 30) -> None:
        return None
