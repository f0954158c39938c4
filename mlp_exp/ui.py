"""The MLflow UI over the search's store: `python -m mlp_exp.ui`.

    python -m mlp_exp.ui [--tracking-uri URI] [--port 5000] [--host 127.0.0.1]

Starts `mlflow server` (tracking.ui_server.UIServer) on the same store the
search writes: --tracking-uri, else $MLFLOW_TRACKING_URI, else
sqlite:///mlruns/mlflow.db. It prints the address once the server answers,
and Ctrl-C (or SIGTERM) stops the server and everything it started. This
module only parses arguments and prints.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import cli
from .errors import UserError, one_line
from .tracking.ui_server import DEFAULT_HOST, DEFAULT_PORT, UIServer


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 1..65535, got {value}")
    return value


def build_parser():
    p = cli.ArgumentParser(prog="python -m mlp_exp.ui",
                           description="Start the MLflow UI on the search's store and print its address; "
                                       "Ctrl-C stops it.")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store; default $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db")
    p.add_argument("--port", type=port, default=DEFAULT_PORT, help="port (default %(default)s)")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help="interface to listen on (default %(default)s: this machine only)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    server = UIServer(args.tracking_uri, args.host, args.port)
    if server.tracking_uri.startswith("sqlite:///") and \
            not Path(server.tracking_uri[len("sqlite:///"):].split("?", 1)[0]).is_file():
        print(f"note: {server.display_uri} holds no runs yet; run `python -m mlp_exp.search` first",
              file=sys.stderr)
    try:                    # start() inside: a Ctrl-C at any moment stops the server
        server.start()
        print(f"MLflow UI: {server.url}  (store {server.display_uri}; Ctrl-C stops it)\n"
              f"  studies, in the UI's 'Model training' view: {server.url}/#/experiments?"
              f"workflowType=machine_learning", flush=True)
        code = server.wait()
        tail = server.log_tail(3)
    except KeyboardInterrupt:
        server.stop()
        print("MLflow UI stopped", file=sys.stderr, flush=True)
        raise
    finally:
        server.stop()
    raise UserError(f"mlflow server exited with code {code}; its log ends: {one_line(tail, 300)}")


if __name__ == "__main__":
    sys.exit(cli.run(main))
