"""The Definitions load, validate, and keep the asset graph's shape (keys, groups, checks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from bqx_assets.core.validation import CHECK_NAMES
from bqx_assets.definitions import defs

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = Path(__file__).with_name("snapshots") / "asset_graph.json"


def _graph_snapshot() -> dict[str, object]:
    graph = defs.resolve_asset_graph()
    nodes = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        nodes[key.to_user_string()] = {
            "group": node.group_name,
            "partitioned": node.partitions_def is not None,
            "materializable": node.is_materializable,
        }
    checks = sorted(f"{k.asset_key.to_user_string()}:{k.name}" for k in graph.asset_check_keys)
    return {"assets": nodes, "checks": checks}


def test_asset_graph_matches_snapshot() -> None:
    """Update with `BQX_UPDATE_SNAPSHOTS=1 pytest bqx_assets_tests/test_definitions.py`."""
    snapshot = _graph_snapshot()
    if os.environ.get("BQX_UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(json.dumps(snapshot, indent=1) + "\n")
    assert snapshot == json.loads(SNAPSHOT.read_text())


def test_graph_is_readable_and_complete() -> None:
    snapshot = _graph_snapshot()
    assets = snapshot["assets"]
    # 21 families: a warehouse node and a checkpoint node each, in the family's group.
    assert len(assets) == 2 * 21 + 4  # + targets x 2, training_file, training_profile
    groups = {a["group"] for a in assets.values()}
    assert len(groups) == 22 and "training" in groups
    assert assets["checkpoints/tri"] == {
        "group": "tri",
        "partitioned": False,
        "materializable": True,
    }
    assert assets["checkpoints/agg"]["partitioned"] is True
    assert snapshot["checks"] == sorted(f"training_file:{name}" for name in CHECK_NAMES)


def test_jobs_and_resources() -> None:
    assert defs.resolve_job_def("pair_training_job").partitions_def is not None
    assert defs.resolve_job_def("shared_checkpoints_job").partitions_def is None
    assert {"warehouse", "checkpoints", "settings", "training_io_manager"} <= set(defs.resources)


def test_prod_resources_point_at_bigquery_and_gcs() -> None:
    from bqx_assets.defs.environment import resources_for
    from bqx_assets.defs.resources import BigQueryWarehouseResource

    prod = resources_for("prod")
    assert isinstance(prod["warehouse"], BigQueryWarehouseResource)
    assert prod["checkpoints"].root == "gs://bqx-ml-staging/checkpoints"
    assert prod["training_io_manager"].output_root == "gs://bqx-ml-output"
    assert prod["settings"].min_rows == 150_000


def test_dagster_definitions_validate_and_load_time() -> None:
    env = {**os.environ, "DAGSTER_HOME": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    timed = subprocess.run(
        [sys.executable, "-c",
         "import time; t = time.perf_counter(); from bqx_assets.definitions import defs; "
         "defs.resolve_asset_graph(); print(time.perf_counter() - t)"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert timed.returncode == 0, timed.stderr
    seconds = float(timed.stdout.strip().splitlines()[-1])
    print(f"definitions load time: {seconds:.2f} s")
    # Measured 2.5-2.7 s here (dagster itself is 1.6 s); twice the 3 s target leaves room for a
    # loaded CI machine while catching an import that drags in a heavy client again.
    assert seconds < 6


def test_training_file_checks_are_blocking() -> None:
    graph = defs.resolve_asset_graph()
    specs = [graph.get_check_spec(k) for k in graph.asset_check_keys]
    assert specs and all(s.blocking for s in specs)
    assert all(isinstance(s, dg.AssetCheckSpec) for s in specs)
