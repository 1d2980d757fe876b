"""Logging set-up, in one place: for the `ddnn` command and the helper processes it starts
(load generators, the paho floor, spawned training ranks), which have no CLI of their own.

Library code only logs through named loggers and never calls this.
"""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# helper processes whose stderr goes to a log file the parent reads back on failure
BRIEF = "%(levelname)s %(name)s: %(message)s"


def configure(level: int = logging.WARNING, fmt: str = FORMAT) -> None:
    """Log to stderr at `level` with `fmt`. Like `logging.basicConfig`, a no-op when the root
    logger has handlers already (pytest's, or an embedding program's)."""
    logging.basicConfig(level=level, format=fmt)


def show_progress(*names: str) -> None:
    """Let these loggers' INFO lines through even at the default WARNING level: the progress of
    a step that is long enough to look hung. A more verbose level set by -v stays."""
    for name in names:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
