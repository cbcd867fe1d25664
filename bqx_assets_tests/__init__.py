"""The test suite: mirrors bqx_assets (core/, defs/, cli/), plus the slow end-to-end suites."""
