"""Errors that reach users: each names the file, field or option and what was expected."""


class DniReconError(Exception):
    """Base class: the CLI prints these as one clear line and exits 2."""


class DataError(DniReconError, ValueError):
    """An input file or array does not have the expected layout."""


class ConfigError(DniReconError, ValueError):
    """An option or setting has a value outside what is accepted."""


class ModelError(DniReconError):
    """A model, checkpoint or registry entry is missing or does not match."""


class Interrupted(Exception):
    """A long job stopped on SIGINT or SIGTERM after saving what it had done; the CLI exits 128 + signum.
    The message is `what`, then `hint` (how to continue), which a caller may replace (the demo does)."""

    def __init__(self, what: str, signum: int, saved: object = None, hint: str = ""):
        super().__init__(f"{what}. {hint}" if hint else what)
        self.what = what  # where it stopped and what it kept
        self.signum = signum
        self.saved = saved  # what it saved to continue from (a checkpoint path), if anything
