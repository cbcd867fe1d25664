"""Each test module's steps get a temporary folder of their own (see `private_tempdir`)."""

from bqx_assets_tests.defs.pipeline import private_tempdir

__all__ = ["private_tempdir"]
