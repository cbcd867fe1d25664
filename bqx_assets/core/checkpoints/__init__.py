"""Checkpoints: each table as date-range chunks of parquet with manifests, refreshed by day."""
