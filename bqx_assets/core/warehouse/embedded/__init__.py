"""The embedded warehouse: a synthetic, production-shaped warehouse in one DuckDB file."""

from bqx_assets.core.warehouse.base import PartitionState
from bqx_assets.core.warehouse.embedded.connection import META, connect
from bqx_assets.core.warehouse.embedded.create import create_warehouse, warehouse_params
from bqx_assets.core.warehouse.embedded.warehouse import REVISED_ROWS, EmbeddedWarehouse
from bqx_assets.core.warehouse.synthetic import DEFAULT_START, trading_minutes

__all__ = [
    "DEFAULT_START",
    "META",
    "REVISED_ROWS",
    "EmbeddedWarehouse",
    "PartitionState",
    "connect",
    "create_warehouse",
    "trading_minutes",
    "warehouse_params",
]
