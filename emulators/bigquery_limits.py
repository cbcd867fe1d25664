"""Rules for `proxy.HttpAnswerProxy` about BigQuery's jobs: the limits, quotas, locations and
slow jobs that local-bigquery does not have, answered as BigQuery documents them. Each rule
looks at the REST exchange (jobs.insert `POST .../jobs`, jobs.get `GET .../jobs/ID`,
jobs.getQueryResults `GET .../queries/ID`) and answers in its place, or returns None."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from emulators.proxy import Exchange, Reply, bigquery_error


def _inserts(exchange: Exchange) -> bool:
    return exchange.method == "POST" and re.search(r"/jobs$", exchange.route) is not None


def _job_id(exchange: Exchange, kind: str) -> str | None:
    """The id of the job a request is about: jobs.get / getQueryResults / cancel by path."""
    match = re.search(rf"/{kind}/([^/:]+)", exchange.route)
    return match.group(1) if match else None


def _config(exchange: Exchange) -> dict[str, Any]:
    body = exchange.json() or {}
    return body.get("configuration") or {}


def _query(exchange: Exchange) -> str:
    return (_config(exchange).get("query") or {}).get("query") or ""


def _array_values(exchange: Exchange) -> int:
    """Values in the query's array parameters (the table names of a PARTITIONS query)."""
    params = (_config(exchange).get("query") or {}).get("queryParameters") or []
    return sum(len((p.get("parameterValue") or {}).get("arrayValues") or []) for p in params)


def partitions_table_limit(limit: int) -> Any:
    """A before-rule: a query of `INFORMATION_SCHEMA.PARTITIONS` that names more than `limit`
    tables is refused with BigQuery's error ("Querying the INFORMATION_SCHEMA.PARTITIONS view
    is limited to 1000 tables", https://cloud.google.com/bigquery/docs/information-schema-partitions)."""
    from bqx_assets.core.warehouse.bigquery.partitions import TOO_MANY_TABLES

    def rule(exchange: Exchange) -> Reply | None:
        if (
            _inserts(exchange)
            and "INFORMATION_SCHEMA.PARTITIONS" in _query(exchange)
            and _array_values(exchange) > limit
        ):
            return bigquery_error(400, "invalidQuery", TOO_MANY_TABLES)
        return None

    return rule


class JobRules:
    """After-rules over a job's life: remembers each job inserted (by id) to answer its later
    jobs.get / getQueryResults as BigQuery would."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.inserted: dict[str, dict[str, Any]] = {}
        """Job id -> its configuration, as inserted (and accepted)."""
        self.inserted_at: dict[str, float] = {}

    def remember(self, exchange: Exchange) -> None:
        if _inserts(exchange) and exchange.status == 200:
            body = exchange.response_json() or {}
            job_id = (body.get("jobReference") or {}).get("jobId")
            if job_id:
                with self.lock:
                    self.inserted.setdefault(job_id, _config(exchange))
                    self.inserted_at.setdefault(job_id, time.monotonic())


class PartitionsAnswer(JobRules):
    """After-rules: `INFORMATION_SCHEMA.PARTITIONS` answers these rows (partition_id, total_rows)
    for the named tables in place of the emulator's, as BigQuery's view has them for a table
    not partitioned (partition_id NULL), partitioned by hour / month / year or integer range,
    with rows in `__NULL__` or in the streaming buffer (`__UNPARTITIONED__`)
    (https://cloud.google.com/bigquery/docs/information-schema-partitions); and each query job
    bills `billed` bytes (`statistics.query.totalBytesBilled`: metadata queries bill a minimum,
    https://cloud.google.com/bigquery/docs/information-schema-intro#pricing), which
    local-bigquery reports as 0."""

    def __init__(
        self,
        rows: Mapping[str, Sequence[tuple[str | None, int]]] | None = None,
        *,
        billed: int = 10 * 1024 * 1024,
        times: Mapping[tuple[str, str], datetime] | None = None,
    ) -> None:
        super().__init__()
        self.rows = {k: list(v) for k, v in (rows or {}).items()}
        self.billed = billed
        self.times = dict(times) if times is not None else None
        """(table, partition_id) -> `last_modified_time`, which BigQuery's view has per
        partition and local-bigquery's has not: with `times`, a query that selects it is
        forwarded selecting NULL instead (`rewrite`) and answered with these times."""
        self._timed: set[str] = set()

    def rewrite(self, exchange: Exchange) -> bytes | None:
        """For `HttpAnswerProxy(rewrite=...)`: a PARTITIONS query of `last_modified_time`
        goes to the emulator selecting NULL (its view has no such column)."""
        column = "last_modified_time AS last_modified_time"
        if self.times is None or not _inserts(exchange) or column not in _query(exchange):
            return None
        body = exchange.json()
        body["configuration"]["query"]["query"] = _query(exchange).replace(
            column, "NULL AS last_modified_time"
        )
        with self.lock:
            self._timed.add(body["jobReference"]["jobId"])
        return json.dumps(body).encode()

    def _time(self, name: str, partition: str | None) -> str | None:
        stamp = (self.times or {}).get((name, partition or ""))
        return None if stamp is None else str(int(stamp.timestamp() * 1_000_000))

    def _partitions_job(self, job_id: str | None) -> bool:
        with self.lock:
            config = self.inserted.get(job_id or "")
        query = ((config or {}).get("query") or {}).get("query") or ""
        return "INFORMATION_SCHEMA.PARTITIONS" in query

    def __call__(self, exchange: Exchange) -> Reply | None:
        self.remember(exchange)
        if exchange.status != 200:
            return None
        if (exchange.method == "GET" and "/jobs/" in exchange.route) or _inserts(exchange):
            body = exchange.response_json() or {}
            done = (body.get("status") or {}).get("state") == "DONE"
            if "query" in (body.get("configuration") or {}) and self.billed and done:
                statistics = body.setdefault("statistics", {})
                statistics.setdefault("query", {})["totalBytesBilled"] = str(self.billed)
                statistics["totalBytesProcessed"] = str(self.billed)
                return Reply(200, body)
            return None
        if exchange.method == "GET" and "/queries/" in exchange.route:
            job_id = _job_id(exchange, "queries")
            body = exchange.response_json() or {}
            if not self._partitions_job(job_id):
                return None
            with self.lock:
                timed = job_id in self._timed
            if timed and "schema" in body:
                # As BigQuery's view has it: a TIMESTAMP per partition.
                fields = [dict(f) for f in body["schema"]["fields"]]
                fields[3]["type"] = "TIMESTAMP"
                body = {**body, "schema": {"fields": fields}}
            if "rows" in body or "maxResults=0" not in exchange.path:
                # A page of rows (without any where the emulator has none of the tables); the
                # first answer (maxResults=0) has only their count.
                kept = [r for r in body.get("rows", []) if r["f"][0]["v"] not in self.rows]
                names = set(_requested(self.inserted.get(job_id or "") or {}))
                for name, partitions in self.rows.items():
                    if name in names:
                        kept += [
                            {"f": [{"v": name}, {"v": pid}, {"v": str(n)}, {"v": None}]}
                            for pid, n in partitions
                        ]
                kept.sort(key=lambda r: (r["f"][0]["v"], r["f"][1]["v"] or ""))
                if timed:
                    # int64 microseconds, as the client asks for them (useInt64Timestamp).
                    for row in kept:
                        row["f"][3] = {"v": self._time(row["f"][0]["v"], row["f"][1]["v"])}
                body = {**body, "rows": kept, "totalRows": str(len(kept))}
            else:
                names = set(_requested(self.inserted.get(job_id or "") or {}))
                extra = sum(len(v) for k, v in self.rows.items() if k in names)
                body = {**body, "totalRows": str(int(body.get("totalRows") or 0) + extra)}
            return Reply(200, body)
        return None


def _requested(config: Mapping[str, Any]) -> list[str]:
    params = (config.get("query") or {}).get("queryParameters") or []
    return [
        v.get("value")
        for p in params
        for v in (p.get("parameterValue") or {}).get("arrayValues") or []
    ]


class SlowJobs(JobRules):
    """After-rules: a job of `kind` ("extract" or "query") reports RUNNING (on insert, on
    jobs.get, and for a query on jobs.getQueryResults as `jobComplete: false`) for `seconds`
    after its insert, then as the emulator reports it (which finishes it at once); a second
    insert of a job id already inserted is answered 409 as BigQuery answers a duplicate id
    ("Already Exists: Job ...", https://cloud.google.com/bigquery/docs/error-messages);
    cancellations are counted."""

    def __init__(self, seconds: float, kind: str = "extract") -> None:
        super().__init__()
        self.seconds = seconds
        self.kind = kind
        self.cancelled: list[str] = []

    def duplicate(self, exchange: Exchange) -> Reply | None:
        """A before-rule: 409 for an insert of a job id that exists."""
        if not _inserts(exchange):
            return None
        job_id = ((exchange.json() or {}).get("jobReference") or {}).get("jobId")
        with self.lock:
            exists = job_id in self.inserted
        if exists:
            project = ((exchange.json() or {}).get("jobReference") or {}).get("projectId")
            return bigquery_error(409, "duplicate", f"Already Exists: Job {project}:{job_id}")
        return None

    def inserts(self) -> list[str]:
        """The ids of the jobs of `kind` inserted, in order."""
        with self.lock:
            return [job_id for job_id, config in self.inserted.items() if self.kind in config]

    def __call__(self, exchange: Exchange) -> Reply | None:
        self.remember(exchange)
        if exchange.method == "POST" and exchange.route.endswith("/cancel"):
            with self.lock:
                self.cancelled.append(_job_id(exchange, "jobs") or "")
            return None
        if exchange.status != 200 or exchange.method not in ("POST", "GET"):
            return None
        body = exchange.response_json() or {}
        job_id = (body.get("jobReference") or {}).get("jobId")
        with self.lock:
            config = self.inserted.get(job_id or "") or {}
            started = self.inserted_at.get(job_id or "")
        if self.kind not in config or started is None:
            return None
        if time.monotonic() - started >= self.seconds:
            return None
        if _job_id(exchange, "queries") is not None:  # jobs.getQueryResults
            return Reply(200, {"kind": body.get("kind"), "jobReference": body.get("jobReference"),
                               "jobComplete": False})  # fmt: skip
        return Reply(200, {**body, "status": {"state": "RUNNING"}})


def extract_quota_refused(exchange: Exchange) -> Reply | None:
    """A before-rule: every extract job insert is refused for the daily export quota, as
    BigQuery answers it (403 `quotaExceeded`;
    https://cloud.google.com/bigquery/docs/troubleshoot-quotas,
    https://cloud.google.com/bigquery/quotas#export_jobs)."""
    if _inserts(exchange) and "extract" in _config(exchange):
        return bigquery_error(
            403,
            "quotaExceeded",
            "Quota exceeded: Your project exceeded quota for extract bytes per day. For more "
            "information, see https://cloud.google.com/bigquery/docs/troubleshoot-quotas",
        )
    return None


def jobs_only_in(location: str) -> Any:
    """A before-rule: a job inserted in another location than `location` (the datasets') is
    answered 404 "Not found: Dataset ... was not found in location ...", as BigQuery answers
    a job sent where its dataset is not (https://cloud.google.com/bigquery/docs/locations)."""

    def rule(exchange: Exchange) -> Reply | None:
        if not _inserts(exchange):
            return None
        reference = (exchange.json() or {}).get("jobReference") or {}
        asked = reference.get("location")
        if asked and asked.lower() != location.lower():
            found = re.search(r"`?([\w-]+)\.([\w-]+)\.", _query(exchange))
            extract = (_config(exchange).get("extract") or {}).get("sourceTable") or {}
            dataset = (
                f"{extract.get('projectId')}:{extract.get('datasetId')}"
                if extract
                else (f"{found.group(1)}:{found.group(2)}" if found else "unknown")
            )
            return bigquery_error(
                404, "notFound", f"Not found: Dataset {dataset} was not found in location {asked}"
            )
        return None

    return rule
