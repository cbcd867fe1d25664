"""Tests of the BigQuery warehouse package, module by module."""
