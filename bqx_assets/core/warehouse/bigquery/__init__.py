"""The production warehouse: BigQuery through the official clients."""

from bqx_assets.core.warehouse.bigquery.export import ExportResult
from bqx_assets.core.warehouse.bigquery.read import row_restriction
from bqx_assets.core.warehouse.bigquery.retry import RetrySettings, is_transient
from bqx_assets.core.warehouse.bigquery.warehouse import BigQueryWarehouse

__all__ = ["BigQueryWarehouse", "ExportResult", "RetrySettings", "is_transient", "row_restriction"]
