"""Dagster definitions of bqx_assets."""
