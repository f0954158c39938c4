"""`mlflow server` over the search's store, as a child process: what `python -m mlp_exp.ui` runs.

The server is the mlflow of this Python environment, on the same store the
search writes (tracking.resolve_tracking_uri). Runs keep their artifacts where
the search put them (file:///.../mlruns/artifacts, a local path stored with each
experiment), and the server reads them from there, so the UI shows every run's
weight grids and training curves; new experiments made in the UI get the same
artifact root. The server's own output goes to a temporary log, quoted if it
fails to start. The store's URI reaches the server by environment
(MLFLOW_BACKEND_STORE_URI), never on its command line, where `ps` would show
a password in it to every user of the machine.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from ..errors import UserError, one_line
from ..urls import safe_url
from .store import (artifact_root, prepare_store, resolve_tracking_uri, store_errors, store_lock,
                    store_lock_path)

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 5000
START_TIMEOUT = 120.0           # seconds; a cold start (imports, db migrations) takes 5-20
STOP_TIMEOUT = 15.0


def mlflow_command() -> list[str]:
    """The mlflow executable beside this Python (a venv's bin/), else `python -m mlflow`."""
    exe = Path(sys.executable).with_name("mlflow")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "mlflow"]


BACKEND_URI_ENV = "MLFLOW_BACKEND_STORE_URI"     # what `mlflow server --backend-store-uri` reads


def server_command(tracking_uri: str, host: str, port: int) -> list[str]:
    """`mlflow server`, one worker, new experiments' artifacts beside the db; the store itself is
    passed as server_env(tracking_uri), not here."""
    command = [*mlflow_command(), "server", "--host", host, "--port", str(port), "--workers", "1"]
    root = artifact_root(tracking_uri)
    if root is not None:
        command += ["--default-artifact-root", root, "--artifacts-destination", root]
    return command


def server_env(tracking_uri: str) -> dict:
    """The server's environment: the store, no GenAI job runner (seven more processes this UI never
    uses), no telemetry."""
    return {**os.environ, BACKEND_URI_ENV: tracking_uri, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "MLFLOW_DISABLE_TELEMETRY": "true"}


def _check_host(host: str, port: int) -> None:
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        raise UserError(f"--host {host} cannot be resolved ({one_line(err)}); pass a name or address of "
                        f"this machine, e.g. {DEFAULT_HOST} (this machine only) or 0.0.0.0 (every interface)") from None


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)    # as the server does: TIME_WAIT is free
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class UIServer:
    """An `mlflow server` child process: `start()` returns once it answers /health, `stop()` ends it.

    The server runs in its own session, so a Ctrl-C in the terminal reaches only
    this process, which then stops the server's whole process group in order.
    """

    def __init__(self, tracking_uri=None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT):
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        if urlparse(self.tracking_uri).scheme in ("http", "https"):
            raise UserError(f"{self.tracking_uri} is a tracking server with its own UI: open it in a browser")
        self.host, self.port = host, port
        self.process: subprocess.Popen | None = None
        self.returncode: int | None = None         # the server's, once stopped
        self._log_path: Path | None = None

    @property
    def display_uri(self) -> str:
        """The store's URI without its password: the one to print."""
        return safe_url(self.tracking_uri)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def log_tail(self, lines: int = 15) -> str:
        if self._log_path is None or not self._log_path.is_file():
            return ""
        return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])

    def start(self, timeout: float = START_TIMEOUT) -> "UIServer":
        """Start the server and wait until it answers; anything that stops the wait (an error,
        Ctrl-C, SIGTERM) stops the server first."""
        _check_host(self.host, self.port)
        if not _port_free(self.host, self.port):
            raise UserError(f"port {self.port} on {self.host} is in use (another MLflow UI?); "
                            f"pass --port with a free one")
        with store_lock(store_lock_path(self.tracking_uri)), store_errors(self.tracking_uri):
            prepare_store(self.tracking_uri)        # the server would make a new one step by step
        handle, name = tempfile.mkstemp(prefix="mlp_exp-ui-", suffix=".log")
        self._log_path = Path(name)
        try:
            with os.fdopen(handle, "w") as log:
                self.process = subprocess.Popen(server_command(self.tracking_uri, self.host, self.port),
                                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                                env=server_env(self.tracking_uri), start_new_session=True)
            self._wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._healthy():
            if self.process.poll() is not None:
                tail, code = self.log_tail(3), self.process.returncode
                self.stop()
                raise UserError(f"mlflow server exited with code {code} before answering; its log ends: "
                                f"{one_line(tail, 300)}")
            if time.monotonic() > deadline:
                tail = self.log_tail(3)
                self.stop()
                raise UserError(f"mlflow server did not answer on {self.url} within {timeout:.0f} s; its log "
                                f"ends: {one_line(tail, 300)}")
            time.sleep(0.5)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait(self) -> int:
        """Block until the server exits by itself; its exit code."""
        return self.process.wait()

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after STOP_TIMEOUT; removes the log."""
        process, self.process = self.process, None
        if process is not None:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                    process.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                except ProcessLookupError:
                    pass
            try:            # workers left behind by a server that died first
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.returncode = process.returncode
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    def __enter__(self) -> "UIServer":
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
