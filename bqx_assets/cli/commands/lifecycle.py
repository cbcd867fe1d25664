"""`bqx lifecycle apply`: set a bucket's object lifecycle rules from a JSON file in deploy/."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bqx_assets.cli.output import emit
from bqx_assets.core.errors import StorageError

if TYPE_CHECKING:  # the client is imported when a command needs it: every `bqx` start loads this
    from google.cloud import storage

# The shipped rules (deploy/), in the JSON form `gcloud storage buckets update --lifecycle-file`
# also accepts:
# - gcs-lifecycle-staging.json: checkpoints are temporary; deleted 7 days after they were written
#   (a resumed run within a week reuses them), interrupted uploads (`*.tmp`) after 1 day.
# - gcs-lifecycle-output.json: published training files and their `versions/` copies are
#   permanent (no rule deletes a live object outside `quarantine/` and `*.tmp`); `versions/`
#   copies move to NEARLINE after 30 days since they are read only to recover; quarantined files
#   are kept 30 days to be inspected; noncurrent generations, which exist only if object
#   versioning is enabled on the bucket as a second safety net, are kept 90 days after being
#   replaced or deleted. Recovery of a previous training file relies on `versions/`, not on them.


def load_rules(path: Path | str) -> list[dict[str, Any]]:
    """Lifecycle rules of a file `{"rule": [...]}` (or `{"lifecycle": {"rule": [...]}}`)."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StorageError(f"cannot read lifecycle rules from {path}: {exc}") from exc
    rules = document.get("lifecycle", document).get("rule") if isinstance(document, dict) else None
    if not isinstance(rules, list) or not rules:
        raise StorageError(f"{path} has no lifecycle rules (expected {{'rule': [...]}})")
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict) or "type" not in rule.get("action", {}):
            raise StorageError(f"{path}: rule {i} has no action type")
        if not isinstance(rule.get("condition"), dict) or not rule["condition"]:
            raise StorageError(f"{path}: rule {i} has no condition")
    return rules


def apply_rules(
    bucket_name: str, rules: list[dict[str, Any]], client: storage.Client | None = None
) -> None:
    """Replace the bucket's lifecycle rules with `rules`."""
    from google.api_core import exceptions as api_exceptions

    from bqx_assets.core.storage.gcs import storage_client

    bucket = (client or storage_client()).bucket(bucket_name)
    try:
        bucket.reload()
        bucket.lifecycle_rules = rules
        bucket.patch()
    except api_exceptions.GoogleAPICallError as exc:
        raise StorageError(f"cannot set lifecycle rules of gs://{bucket_name}: {exc}") from exc


def _run(args: argparse.Namespace) -> int:
    rules = load_rules(args.rules)
    if not args.dry_run:
        apply_rules(args.bucket, rules)
    emit(
        {
            "bucket": args.bucket,
            "rules_file": str(args.rules),
            "rules": rules,
            "applied": not args.dry_run,
        }
    )
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("lifecycle", help="Manage the lifecycle rules of a bucket.")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    apply = actions.add_parser("apply", help="Replace a bucket's lifecycle rules with a file's.")
    apply.add_argument("--bucket", required=True, help="bucket name, without gs://")
    apply.add_argument(
        "--rules",
        required=True,
        type=Path,
        help="JSON rules, e.g. deploy/gcs-lifecycle-output.json",
    )
    apply.add_argument("--dry-run", action="store_true", help="print the rules, change nothing")
    apply.set_defaults(handler=_run)
