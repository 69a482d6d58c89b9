"""Exceptions that carry one clear line for the user: what was wrong, where, and what to do."""


class ConfigError(ValueError):
    """A configuration value is wrong (missing data_dir, bad split name, ...). The CLI prints it and exits with 2."""


class DataError(RuntimeError):
    """A data file is unusable (undecodable video, malformed CSV row, path outside data_dir, ...)."""
