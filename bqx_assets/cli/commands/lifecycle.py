"""`bqx lifecycle apply`: set a bucket's object lifecycle rules from a JSON file in deploy/, or
show what they would delete from the bucket as it is."""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bqx_assets.cli.output import emit
from bqx_assets.core.errors import StorageError
from bqx_assets.core.storage.lifecycle import Lifecycle, ObjectState, bucket_objects, load_lifecycle

if TYPE_CHECKING:  # the client is imported when a command needs it: every `bqx` start loads this
    from google.cloud import storage

# The shipped rules are deploy/gcs-lifecycle-{staging,output}.json, in the JSON form that
# `gcloud storage buckets update --lifecycle-file` also reads; what each rule deletes and why:
# deploy/README.md, "Bucket lifecycle".

SHOWN = 20
"""Names shown per rule that would delete something."""


def apply_rules(
    bucket_name: str, lifecycle: Lifecycle, client: storage.Client | None = None
) -> None:
    """Replace the bucket's lifecycle rules with `lifecycle`'s, as its file writes them."""
    from google.api_core import exceptions as api_exceptions

    from bqx_assets.core.storage.gcs import storage_client

    bucket = (client or storage_client()).bucket(bucket_name)
    try:
        bucket.reload()
        bucket.lifecycle_rules = lifecycle.records
        bucket.patch()
    except api_exceptions.GoogleAPICallError as exc:
        raise StorageError(f"cannot set lifecycle rules of gs://{bucket_name}: {exc}") from exc


def would_delete(
    lifecycle: Lifecycle, objects: Sequence[ObjectState], at: datetime
) -> list[dict[str, Any]]:
    """Per rule that deletes something at `at`: its index and condition, how many live and
    noncurrent versions it deletes, and the first of their names."""
    by_rule: dict[int, list[ObjectState]] = defaultdict(list)
    for obj, index in lifecycle.deletions(objects, at):
        by_rule[index].append(obj)
    return [
        {
            "rule": index,
            "condition": lifecycle.rules[index].record.get("condition"),
            "live": sum(o.live for o in found),
            "noncurrent": sum(not o.live for o in found),
            "names": sorted({o.name for o in found})[:SHOWN],
        }
        for index, found in sorted(by_rule.items())
    ]


def _at(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO date or time") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _run(args: argparse.Namespace) -> int:
    lifecycle = load_lifecycle(args.rules)
    result: dict[str, Any] = {
        "bucket": args.bucket,
        "rules_file": str(args.rules),
        "rules": lifecycle.records,
        "applied": not args.dry_run,
    }
    if not args.dry_run and (args.at or args.prefix):
        raise StorageError("--at and --prefix judge a bucket's objects: they go with --dry-run")
    if args.dry_run:
        from bqx_assets.core.storage.gcs import storage_client

        at = args.at or datetime.now(UTC)
        objects = bucket_objects(storage_client(), args.bucket, args.prefix)
        deleted = would_delete(lifecycle, objects, at)
        print(
            f"gs://{args.bucket}/{args.prefix}: {len(objects)} object versions; at "
            f"{at.isoformat()} the rules of {args.rules} would delete "
            f"{sum(d['live'] + d['noncurrent'] for d in deleted)}"
        )
        for d in deleted:
            print(
                f"  rule {d['rule']} {d['condition']}: {d['live']} live, {d['noncurrent']} "
                f"noncurrent, e.g. {', '.join(d['names'][:3])}"
            )
        result |= {"at": at.isoformat(), "objects": len(objects), "would_delete": deleted}
    else:
        apply_rules(args.bucket, lifecycle)
    emit(result)
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
    apply.add_argument(
        "--dry-run",
        action="store_true",
        help="change nothing: print the rules and what they would delete from the bucket now",
    )
    apply.add_argument(
        "--at",
        type=_at,
        default=None,
        help="with --dry-run: judge the objects as of this ISO time (UTC; default: now), e.g. "
        "a month ahead to see what goes if nothing changes",
    )
    apply.add_argument(
        "--prefix", default="", help="with --dry-run: only the objects under this prefix"
    )
    apply.set_defaults(handler=_run)
