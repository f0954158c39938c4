"""What every command shares: one-line errors, honest exit codes, and argument types.

`run(main)` calls a command's `main(argv)`: a `UserError` (bad flag, missing
data, unreachable store) is printed as one line, `error: ...`, with exit code
2 and no traceback; Ctrl-C exits 130 and SIGTERM 143, after the command has
closed what it had open. Every command parses with `ArgumentParser`, whose
usage errors are one line too. No password in a store URL reaches the
terminal: error lines and log records pass through urls.safe_url.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
import textwrap

from .errors import UserError, one_line
from .interrupts import CommandSignals, Terminated
from .urls import safe_url

EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 2, 130, 143


class RedactPasswords(logging.Filter):
    """A log record's message with every password in a URL shown as *** (urls.safe_url)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        safe = safe_url(message)
        if safe != message:
            record.msg, record.args = safe, ()
        return True


def run(main, argv=None) -> int:
    """Call main(argv) and turn user errors and interrupts into one line and an exit code."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactPasswords) for f in handler.filters):
            handler.addFilter(RedactPasswords())
    with CommandSignals() as signals:
        try:
            code = main(argv) or 0
        except UserError as err:
            print(f"error: {safe_url(one_line(err, None))}", file=sys.stderr)
            return EXIT_USAGE
        except Terminated:
            return EXIT_TERMINATED
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
    # a signal Python dropped (see CommandSignals) still says the command was stopped
    if signals.received is not None:
        return EXIT_TERMINATED if signals.received is Terminated else EXIT_INTERRUPTED
    return code


class HelpFormatter(argparse.HelpFormatter):
    def _split_lines(self, text, width):
        # keep URIs and folder names such as models:/mlp-cifar10@champion on one line
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is a one-line `error: ...` with exit code 2 like every other;
    every command answers --version."""

    def __init__(self, *args, **kwargs):
        from . import __version__
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument("--version", action="version", version=f"mlp_exp {__version__}")

    def error(self, message):
        print(f"error: {safe_url(one_line(message, None))} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value
