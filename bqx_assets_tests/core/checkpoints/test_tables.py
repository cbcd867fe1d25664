"""A job for every table on a bounded thread pool: results in table order, a failing table
named without stopping the others."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.checkpoints.schema import Source
from bqx_assets.core.checkpoints.tables import for_each_table
from bqx_assets.core.errors import ExtractionError, WarehouseError


def _tables(mini: tuple[Catalog, Path]) -> list[Source]:
    catalog, _ = mini
    return [catalog.targets["eurusd"], *catalog.tables_for("eurusd")]


def test_results_come_in_table_order_and_progress_on_the_calling_thread(
    mini: tuple[Catalog, Path],
) -> None:
    sources = _tables(mini)
    caller = threading.get_ident()
    running, most = [0], [0]
    lock = threading.Lock()
    done: list[str] = []
    ticks: list[int] = []
    threads: list[int] = []

    def job(source: Source) -> str:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.01 * (len(sources) - sources.index(source)))  # the last ones end first
        with lock:
            running[0] -= 1
        return source.name

    def on_done(name: str) -> None:
        done.append(name)
        threads.append(threading.get_ident())

    def tick(n: int) -> None:
        ticks.append(n)
        threads.append(threading.get_ident())

    results = for_each_table(
        sources, job, threads=3, what="test", kept="results", on_done=on_done, tick=tick
    )
    assert results == [s.name for s in sources]
    assert sorted(done) == sorted(results) and done != results  # as they finished
    assert ticks == list(range(1, len(sources) + 1))
    assert set(threads) == {caller}
    assert most[0] == 3  # bounded by `threads`


def test_a_failing_table_is_named_and_does_not_stop_the_others(
    mini: tuple[Catalog, Path],
) -> None:
    sources = _tables(mini)
    failing = {sources[2].name: "no such table", sources[5].name: "unreadable chunk"}
    ran: list[str] = []
    done: list[str] = []

    def job(source: Source) -> str:
        ran.append(source.name)
        if source.name in failing:
            raise WarehouseError(f"{source.name}: {failing[source.name]}")
        return source.name

    with pytest.raises(ExtractionError) as err:
        for_each_table(sources, job, threads=2, what="refresh", kept="chunks",
                       on_done=done.append, tick=lambda n: None)  # fmt: skip
    text = str(err.value)
    assert text.startswith(f"2 of {len(sources)} tables failed, the other chunks are kept: ")
    for name, why in failing.items():
        assert f"{name}: {name}: {why}" in text
    assert sorted(ran) == sorted(s.name for s in sources)
    assert sorted(done) == sorted(s.name for s in sources if s.name not in failing)


def test_more_than_ten_failures_are_counted_and_the_first_ten_named(
    mini: tuple[Catalog, Path],
) -> None:
    sources = _tables(mini)

    def job(source: Source) -> str:
        raise ExtractionError("gone")

    with pytest.raises(ExtractionError) as err:
        for_each_table(sources, job, threads=4, what="refresh", kept="chunks",
                       on_done=lambda r: None, tick=lambda n: None)  # fmt: skip
    text = str(err.value)
    named = sorted(s.name for s in sources)
    assert f"{len(sources)} of {len(sources)} tables failed" in text
    assert all(f"{n}: gone" in text for n in named[:10])
    assert named[10] not in text
    assert text.endswith(f"(and {len(sources) - 10} more)")


def test_an_error_that_is_not_the_pipeline_s_is_raised_as_it_is(
    mini: tuple[Catalog, Path],
) -> None:
    """A bug (not a BqxError) is not reported as a failed table: it propagates."""
    sources = _tables(mini)

    def job(source: Source) -> str:
        if source is sources[0]:
            raise KeyError("a bug")
        return source.name

    with pytest.raises(KeyError, match="a bug"):
        for_each_table(sources, job, threads=2, what="refresh", kept="chunks",
                       on_done=lambda r: None, tick=lambda n: None)  # fmt: skip
