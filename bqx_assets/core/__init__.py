"""The domain core: catalog, warehouses, extraction, merge, validation, storage. No Dagster."""
