"""What a table of the embedded warehouse should hold and what it holds."""

from __future__ import annotations

import pyarrow as pa

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse
from bqx_assets.core.warehouse.synthetic import Series, feature_table_data, targets_table_data


def as_generated(catalog: Catalog, name: str, series: Series) -> pa.Table:
    """The table as the generator makes it for `series`."""
    for targets in catalog.targets.values():
        if targets.name == name:
            return targets_table_data(targets, series)
    return feature_table_data(catalog.table(name), series)


def as_stored(wh: EmbeddedWarehouse, dataset: str, name: str) -> pa.Table:
    """The table as the file holds it, in key order."""
    sql = f'SELECT * FROM "{dataset}"."{name}" ORDER BY interval_time'
    return wh._cursor().execute(sql).to_arrow_table()
