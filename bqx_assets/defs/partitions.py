"""Every currency pair is a partition."""

from __future__ import annotations

import dagster as dg

from bqx_assets.core.catalog import PAIRS

pairs_partitions = dg.StaticPartitionsDefinition(list(PAIRS))
