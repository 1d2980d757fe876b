"""User-facing errors: the CLI prints their message as one line, without a traceback."""


class DdnnError(ValueError):
    """A mistake the user can fix (wrong path, name, shape, missing data); the message says how."""
