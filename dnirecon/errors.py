"""Errors that reach users: each names the file, field or option and what was expected."""


class DniReconError(Exception):
    """Base class: the CLI prints these as one clear line and exits 2."""


class DataError(DniReconError, ValueError):
    """An input file or array does not have the expected layout."""


class ConfigError(DniReconError, ValueError):
    """An option or setting has a value outside what is accepted."""


class ModelError(DniReconError):
    """A model, checkpoint or registry entry is missing or does not match."""
