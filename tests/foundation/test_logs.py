import logging

from ddnn import logs


def test_show_progress_lets_info_through_without_quieting_a_verbose_logger():
    quiet, verbose = logging.getLogger("ddnn.test.quiet"), logging.getLogger("ddnn.test.verbose")
    quiet.setLevel(logging.WARNING)
    verbose.setLevel(logging.DEBUG)
    try:
        logs.show_progress("ddnn.test.quiet", "ddnn.test.verbose")
        assert quiet.level == logging.INFO and verbose.level == logging.DEBUG
    finally:
        quiet.setLevel(logging.NOTSET)
        verbose.setLevel(logging.NOTSET)
