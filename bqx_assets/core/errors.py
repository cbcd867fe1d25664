"""Errors a user sees: each message names the pair, table, column or file at fault."""


class BqxError(Exception):
    """Base class for every expected failure of the pipeline."""


class CatalogError(BqxError):
    """The catalog is missing, malformed, or does not describe the warehouse."""


class WarehouseError(BqxError):
    """A warehouse table could not be read."""


class ExtractionError(BqxError):
    """A table could not be checkpointed, or checkpoints are missing after extraction."""


class WindowError(BqxError):
    """The training window is set twice over, or selects no day of a pair."""


class MergeError(BqxError):
    """A checkpoint cannot be merged into the training file."""


class FooterError(MergeError):
    """A parquet footer the merge cannot assemble safely (for example a field it does not know)."""


class StorageError(BqxError):
    """A file could not be written, verified or published under a storage root."""


class ReplacedWhileRead(StorageError):
    """A stored file changed or went after it was checked, while it was being read: a refresh
    of the checkpoints it belongs to replaced it. What was read is of no one version."""


class ValidationError(BqxError):
    """A training file failed a gate check."""
