"""A throwaway PostgreSQL cluster for tests: its own data folder, 127.0.0.1 and a free port.

    with PostgresCluster() as pg:        # skips the test where initdb/pg_ctl/postgres are absent
        url = pg.url                     # postgresql://postgres@127.0.0.1:<port>/postgres
        pg.stop(); pg.start()            # fault injection: the same cluster, the same port

PostgreSQL refuses to run as root: as root the binaries run as the `postgres`
user (via runuser), the cluster folder is made in /tmp (not under pytest's
root-only tmp folder) and handed to that user. The cluster trades durability
for speed (fsync off): it lives for one test module.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from helpers import free_port

BINARIES = ("initdb", "pg_ctl", "postgres")
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/bin", "/usr/lib/postgresql/15/bin"])


def _as_user() -> tuple[list[str], str | None]:
    """(command prefix, user) to run PostgreSQL binaries: nothing as a normal user, runuser as root."""
    if os.geteuid() != 0:
        return [], None
    import pwd
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no `postgres` user to run PostgreSQL as")
    if shutil.which("runuser") is None:
        pytest.skip("running as root without runuser to run PostgreSQL as `postgres`")
    return ["runuser", "-u", "postgres", "--"], "postgres"


class PostgresCluster:
    def __init__(self, port: int | None = None):
        missing = [b for b in BINARIES if shutil.which(b, path=SEARCH_PATH) is None]
        if missing:
            pytest.skip(f"PostgreSQL binaries not found: {', '.join(missing)}")
        self.bin = {b: shutil.which(b, path=SEARCH_PATH) for b in BINARIES}
        self.prefix, user = _as_user()
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="mlp_exp_pg_"))
        self.data, self.sockets, self.log = self.root / "data", self.root / "sockets", self.root / "server.log"
        self.sockets.mkdir()
        if user is not None:
            for path in (self.root, self.sockets):
                shutil.chown(path, user, user)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "-E", "UTF8", "--no-sync", "--no-instructions")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, binary, *args, timeout=120):
        result = subprocess.run([*self.prefix, self.bin[binary], *args], capture_output=True, text=True,
                                timeout=timeout, cwd=self.root)
        if result.returncode != 0:
            raise RuntimeError(f"{binary} {' '.join(args)} failed ({result.returncode}): "
                               f"{result.stderr.strip() or result.stdout.strip()}; log: {self.log_text()}")
        return result

    def log_text(self) -> str:
        try:
            return self.log.read_text()[-2000:]
        except OSError:
            return ""

    def start(self) -> None:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.sockets} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log), "-o", options)

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "stop", "-w", "-t", "60", "-m", mode, "-D", str(self.data))

    def running(self) -> bool:
        return subprocess.run([*self.prefix, self.bin["pg_ctl"], "status", "-D", str(self.data)],
                              capture_output=True).returncode == 0

    def wait_ready(self, timeout=30.0) -> None:
        import psycopg2
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg2.connect(self.url, connect_timeout=2).close()
                return
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def destroy(self) -> None:
        if self.running():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "PostgresCluster":
        self.start()
        self.wait_ready()
        return self

    def __exit__(self, *exc) -> None:
        self.destroy()
