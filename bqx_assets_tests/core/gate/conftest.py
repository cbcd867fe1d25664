"""Fixtures of the gate's tests."""

from __future__ import annotations

import pytest

from bqx_assets.core.gate.profile import Profile
from bqx_assets.core.gate.report import Expectation
from bqx_assets_tests.core.gate import handmade, merged


@pytest.fixture
def expectation() -> Expectation:
    """What the tiny catalog expects of a hand-made file."""
    return Expectation.for_pair(handmade.tiny_catalog(), handmade.PAIR, handmade.ROWS)


@pytest.fixture(scope="session")
def history(tmp_path_factory: pytest.TempPathFactory) -> Profile:
    """The profile of a clean merged file that passed: the last published one of drift tests."""
    report = merged.build(tmp_path_factory.mktemp("published"))
    assert report.passed and report.profile is not None, report.summary()
    return Profile.from_bytes(report.profile.to_bytes(), "history")
