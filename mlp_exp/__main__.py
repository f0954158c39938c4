"""`mlp-exp COMMAND ...` (or `python -m mlp_exp COMMAND ...`): the four commands under one name.

    mlp-exp search --trials 50      # = python -m mlp_exp.search --trials 50
    mlp-exp ui | mlp-exp evaluate | mlp-exp report

Each command keeps its own flags and --help; this only picks the module.
"""
from __future__ import annotations

import importlib
import sys

from . import __version__, cli

COMMANDS = {
    "search": "search hyperparameters, track every trial, promote the champion",
    "ui": "the MLflow UI on the study's store",
    "evaluate": "score a logged model (default: the champion) on the test set",
    "report": "write (and log) a study's report again",
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: mlp-exp COMMAND [flags]   (mlp-exp COMMAND --help for its flags)", "", "commands:"]
    lines += [f"  {name:<{width}}  {what}" for name, what in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(usage(), file=sys.stderr)
        return cli.EXIT_USAGE
    if argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        print(f"mlp_exp {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; choose one of {', '.join(COMMANDS)} (see mlp-exp --help)",
              file=sys.stderr)
        return cli.EXIT_USAGE
    module = importlib.import_module(f"mlp_exp.{command}")
    return cli.run(module.main, rest)


if __name__ == "__main__":
    sys.exit(main())
