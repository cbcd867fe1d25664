"""A job for every table on a bounded thread pool, failures collected and named at the end."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TypeVar

from bqx_assets.core.checkpoints.schema import Source
from bqx_assets.core.errors import BqxError, ExtractionError
from bqx_assets.core.memory import MemoryReturn

log = logging.getLogger(__name__)
T = TypeVar("T")


def for_each_table(
    sources: Sequence[Source],
    job: Callable[[Source], T],
    *,
    threads: int,
    what: str,
    kept: str,
    on_done: Callable[[T], None],
    tick: Callable[[int], None],
) -> list[T]:
    """`job` for every table on a bounded thread pool, results in `sources` order. A table that
    fails does not stop the others: once all have run, one ExtractionError names the failed
    tables (the first ten) and their reasons. `on_done` and `tick` (tables finished so far) run
    on the calling thread."""
    results: dict[str, T] = {}
    failures: dict[str, str] = {}
    memory = MemoryReturn()

    def one(source: Source) -> T:
        try:
            return job(source)
        finally:
            memory.after_table()  # the table's buffers are freed: RSS back to what is in use

    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix=what) as pool:
        futures = {pool.submit(one, s): s for s in sources}
        for future in as_completed(futures):
            source = futures[future]
            try:
                result = future.result()
            except BqxError as exc:
                failures[source.name] = str(exc)
                log.error("%s of %s failed: %s", what, source.name, exc)
            else:
                results[source.name] = result
                on_done(result)
            tick(len(results) + len(failures))
    if failures:
        listed = "; ".join(f"{name}: {why}" for name, why in sorted(failures.items())[:10])
        more = f" (and {len(failures) - 10} more)" if len(failures) > 10 else ""
        raise ExtractionError(
            f"{len(failures)} of {len(sources)} tables failed, the other {kept} are kept: "
            f"{listed}{more}"
        )
    return [results[s.name] for s in sources]
