"""What every command-line entry point shares: one-line errors and honest exit codes.

A `UserError` (bad flag, missing data, unreachable store) is printed as one
line, `error: ...`, with exit code 2 and no traceback. Ctrl-C exits 130 and
SIGTERM 143, after the command has closed what it had open.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys

from .errors import UserError

EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 2, 130, 143


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so the same cleanup runs (Optuna marks the trial failed, too)."""


def _raise_terminated(signum, frame):
    raise Terminated()


def run(main, argv=None) -> int:
    """Call main(argv) and turn user errors and interrupts into one line and an exit code."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return main(argv) or 0
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except Terminated:
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is a one-line `error: ...` with exit code 2 like every other."""

    def error(self, message):
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
