"""End-to-end suites against a running dagster-webserver and dagster-daemon (slow)."""
