"""Google services emulated on 127.0.0.1 for the tests and the benchmarks: fake-gcs-server,
local-bigquery, and proxies that answer as the real services do where the emulators cannot."""
