"""Rules for `proxy.HttpAnswerProxy`: BigQuery's REST answers that the emulator cannot give (a
dataset's location, a view, a table partitioned otherwise, rows in the streaming buffer, a
permission withheld), shaped as the API reference documents them."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from emulators.proxy import Exchange, Reply, Rule


def _gets(exchange: Exchange, pattern: str) -> bool:
    return exchange.method == "GET" and re.search(pattern + "$", exchange.route) is not None


def dataset_location(dataset: str, location: str) -> Rule:
    """datasets.get of `dataset` answers `location` (the emulator puts every dataset in US;
    https://cloud.google.com/bigquery/docs/reference/rest/v2/datasets#Dataset.FIELDS.location)."""

    def rule(exchange: Exchange) -> Reply | None:
        if exchange.status == 200 and _gets(exchange, f"/datasets/{re.escape(dataset)}"):
            return Reply(200, {**exchange.response_json(), "location": location})
        return None

    return rule


def table_fields(dataset: str, table: str, fields: Mapping[str, Any]) -> Rule:
    """tables.get of `dataset.table` answers these fields of the Table resource in place of
    the emulator's (https://cloud.google.com/bigquery/docs/reference/rest/v2/tables#Table)."""
    path = f"/datasets/{re.escape(dataset)}/tables/{re.escape(table)}"

    def rule(exchange: Exchange) -> Reply | None:
        if exchange.status == 200 and _gets(exchange, path):
            return Reply(200, {**exchange.response_json(), **fields})
        return None

    return rule


def view(dataset: str, table: str) -> Rule:
    """The table is a view: `type` VIEW with its `view.query`, and, as for any view, no
    partitioning and no storage figures."""

    def rule(exchange: Exchange) -> Reply | None:
        reply = table_fields(dataset, table, {})(exchange)
        if reply is None:
            return None
        body = {k: v for k, v in reply.body.items()
                if k not in ("timePartitioning", "numBytes", "numRows")}  # fmt: skip
        body |= {"type": "VIEW", "view": {"query": f"SELECT * FROM `{dataset}.{table}_base`"}}
        return Reply(200, body)

    return rule


def partitioned_by(dataset: str, table: str, kind: str, field: str | None) -> Rule:
    """`timePartitioning` of another kind (HOUR, MONTH, YEAR) or on another field (None:
    ingestion time): https://cloud.google.com/bigquery/docs/reference/rest/v2/tables#TimePartitioning."""
    partitioning = {"type": kind} | ({"field": field} if field else {})
    return table_fields(dataset, table, {"timePartitioning": partitioning})


def streaming_buffer(dataset: str, table: str, rows: int) -> Rule:
    """`streamingBuffer` of a table with rows streamed and not yet committed to partitions
    (int64 fields as strings, as JSON carries them):
    https://cloud.google.com/bigquery/docs/reference/rest/v2/tables#Streamingbuffer."""
    buffer = {"estimatedRows": str(rows), "estimatedBytes": str(rows * 64),
              "oldestEntryTime": "1706300000000"}  # fmt: skip
    return table_fields(dataset, table, {"streamingBuffer": buffer})


def permissions_withheld(dataset: str, withheld: Iterable[str]) -> Rule:
    """tables.testIamPermissions on the dataset's tables answers without `withheld`: the
    response lists only the permissions the caller has
    (https://cloud.google.com/bigquery/docs/reference/rest/v2/tables/testIamPermissions)."""
    gone = set(withheld)
    path = f"/datasets/{re.escape(dataset)}/tables/[^/]+:testIamPermissions"

    def rule(exchange: Exchange) -> Reply | None:
        if exchange.method != "POST" or not re.search(path + "$", exchange.route):
            return None
        asked = (exchange.json() or {}).get("permissions", [])
        held = [p for p in asked if p not in gone]
        return Reply(200, {"permissions": held} if held else {})

    return rule
