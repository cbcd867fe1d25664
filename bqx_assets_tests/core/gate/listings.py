"""Reading a check's listings (its markdown tables in the UI) in tests."""

from __future__ import annotations

from bqx_assets.core.gate.report import CheckOutcome, Listing


def listed(outcome: CheckOutcome, key: str) -> list[dict[str, str | int]]:
    """The rows of listing `key` of a check's metadata, by column header."""
    value = outcome.metadata[key]
    assert isinstance(value, Listing), f"{outcome.name}.{key} is not a listing: {value!r}"
    return value.to_json()


def column(outcome: CheckOutcome, key: str, header: str) -> list[str | int]:
    """One column of listing `key`."""
    return [row[header] for row in listed(outcome, key)]
