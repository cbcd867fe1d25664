"""Every currency pair is a partition."""

from __future__ import annotations

import dagster as dg

from bqx_assets.defs.environment import graph_catalog

pairs_partitions = dg.StaticPartitionsDefinition(list(graph_catalog().pairs))
"""The pairs of the deployment's catalog (`defs/environment.py`), the one the runs read."""
