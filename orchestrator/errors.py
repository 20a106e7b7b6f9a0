"""Errors the CLI reports as one line with exit code 2 (kept import-free so the CLI starts fast)."""


class UsageError(ValueError):
    """Bad input from the user: printed as one line, exit code 2, before anything is written."""
