"""What many tests share: the repo root, a free port, and running the package's commands in a subprocess."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (right now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_env(**extra) -> dict:
    """The environment for a command under test: the repo importable, no telemetry, no ambient tracking URI."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return {**env, **extra}


def run_cli(module, *args, cwd, timeout=600, **env) -> subprocess.CompletedProcess:
    """`python -m module args` in cwd (cli_env plus `env`), its output captured as text."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=cli_env(**env), capture_output=True,
                          text=True, timeout=timeout)
