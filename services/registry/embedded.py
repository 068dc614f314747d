"""The registry's private PostgreSQL (the embedded default, run by `pgserver`): start or adopt the
server of a data directory, tell whether it still runs, restart it in place, and stop it."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from modelyard.common.log import event

log = logging.getLogger("modelyard.registry.embedded")

DATABASE = "modelyard"


def _alive(pid: int, *, name: str | None = None) -> bool:
    """A running process (zombies are dead: nothing may reap them soon in a container)."""
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and (name is None or proc.name() == name)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


class EmbeddedPostgres:
    """The PostgreSQL kept in `data_dir/pgdata`. Every method blocks: call them from an executor.

    pgserver stops a server only when the process holding the last handle exits and its list of
    handle pids (`pgdata/.handle_pids.json`) names no other pid. A SIGKILLed registry never takes
    its pid off that list, so every later registry adopted the server and left it running at exit.
    Here the registry owns what it starts or adopts: `stop()` drops the pids of processes that are
    gone and stops the server unless a live process still holds a handle.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.pgdata = (data_dir / "pgdata").expanduser().resolve()
        self.url = ""
        self._server: Any = None  # pgserver.PostgresServer
        # A restart running in an executor thread must finish before `stop()` looks at the server.
        self._lock = threading.Lock()
        self._stopped = False

    def start(self) -> str:
        """Start the server (or adopt the one already running there); return the URL of its database."""
        import pgserver

        with self._lock:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._stopped = False
            self._forget_dead_postmaster()
            self._server = pgserver.get_server(self.pgdata, cleanup_mode=None)
            self._ensure_running()
            exists = self._server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}';")
            if "(1 row)" not in exists:
                self._server.psql(f"CREATE DATABASE {DATABASE};")
            self.url = str(self._server.get_uri(DATABASE))
            return self.url

    @property
    def pid(self) -> int | None:
        """The postmaster's pid, from `postmaster.pid`; None when there is none.

        A negative pid there is a standalone backend (initdb's), never a server to adopt or stop.
        """
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, IndexError, ValueError):
            return None
        return pid if pid > 0 else None

    def running(self) -> bool:
        """Cheap: does the postmaster named in `postmaster.pid` still run?"""
        pid = self.pid
        return pid is not None and _alive(pid, name="postgres")

    def restart(self) -> str:
        """Start the server again in the same data directory after it died; return its URL.

        Raises when it cannot start yet (e.g. the dead server's processes still hold its shared
        memory for a moment): the caller retries.
        """
        with self._lock:
            if self._stopped or self._server is None:
                raise RuntimeError("the embedded PostgreSQL was stopped on purpose")
            self._wait_for_old_processes()
            self._forget_dead_postmaster()
            self._ensure_running()
            url = str(self._server.get_uri(DATABASE))
            if url != self.url:  # pgserver picks the same socket directory for a data directory
                event(log, "embedded_postgres.url_changed", level=logging.WARNING, old=self.url, new=url)
            return url

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the server unless another live process still holds a handle on it."""
        from pgserver import pg_ctl  # type: ignore[attr-defined]  # made at import, one per binary
        from pgserver.postgres_server import PostgresServer

        with self._lock:
            if self._server is None or self._stopped:
                return
            self._stopped = True
            me = os.getpid()
            with PostgresServer._lock:
                handles = self._server.global_process_id_list
                others = [pid for pid in handles.get() if pid != me and _alive(pid)]
                handles.put(others)
            if others:
                event(log, "embedded_postgres.left_running", pgdata=str(self.pgdata), held_by=others)
                return
            pid = self.pid
            if pid is None or not _alive(pid, name="postgres"):
                return
            started = time.monotonic()
            try:
                pg_ctl(
                    ["-w", "-m", "fast", "-t", str(int(timeout_s)), "stop"],
                    pgdata=self.pgdata,
                    user=self._server.system_user,
                    timeout=timeout_s + 5,
                )
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                event(log, "embedded_postgres.stop_failed", level=logging.WARNING, pid=pid, error=str(exc))
                self._kill(pid)
            event(
                log,
                "embedded_postgres.stopped",
                pid=pid,
                pgdata=str(self.pgdata),
                seconds=round(time.monotonic() - started, 3),
            )

    def _ensure_running(self) -> None:
        """Under pgserver's lock across processes: adopt the running server, or start it."""
        from pgserver.postgres_server import PostgresServer

        with PostgresServer._lock:
            # A handle made earlier in this process is cached by pgserver with what it saw then.
            self._server.ensure_postgres_running()
            self._server.global_process_id_list.get_and_add(os.getpid())

    def _forget_dead_postmaster(self) -> None:
        """Remove the lock files of a dead postmaster whose pid is a zombie or some other program.

        pgserver (and PostgreSQL itself, by `kill(pid, 0)`) would take such a pid for a running
        server: pgserver then adopts a dead server, and PostgreSQL refuses to start ("lock file
        already exists") until the zombie is reaped, which in a container may take long or never.
        """
        from pgserver.postgres_server import PostgresServer

        with PostgresServer._lock:
            pid = self.pid
            if pid is None or not psutil.pid_exists(pid) or _alive(pid, name="postgres"):
                return  # no file, a pid nobody has (PostgreSQL overwrites it), or a real server
            pid_file = self.pgdata / "postmaster.pid"
            lines = pid_file.read_text().splitlines()
            stale = [pid_file]
            if len(lines) > 4 and lines[3].strip() and lines[4].strip():  # port, socket directory
                socket_lock = Path(lines[4].strip()) / f".s.PGSQL.{lines[3].strip()}.lock"
                with contextlib.suppress(OSError, IndexError):
                    if socket_lock.read_text().splitlines()[0].strip() == str(pid):
                        stale.append(socket_lock)
            event(log, "embedded_postgres.stale_lock_files", pid=pid, files=[str(f) for f in stale])
            for path in stale:
                path.unlink(missing_ok=True)

    def _wait_for_old_processes(self, timeout_s: float = 10.0) -> None:
        """Wait until no process of the dead server holds its shared memory any more.

        Its backends notice the postmaster's death and exit within about a second; until then
        PostgreSQL refuses to start ("pre-existing shared memory block is still in use").
        """
        shmid = self._shmid()
        deadline = time.monotonic() + timeout_s
        while shmid is not None and time.monotonic() < deadline:
            attached = _shm_attached(shmid)
            if not attached:
                return
            time.sleep(0.05)

    def _shmid(self) -> int | None:
        """The SysV shared memory id the server noted in `postmaster.pid` (line 7: key, id)."""
        try:
            return int((self.pgdata / "postmaster.pid").read_text().splitlines()[6].split()[-1])
        except (OSError, IndexError, ValueError):
            return None

    @staticmethod
    def _kill(pid: int) -> None:
        try:
            proc = psutil.Process(pid)
            proc.terminate()
            proc.wait(5)
        except psutil.TimeoutExpired:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def _shm_attached(shmid: int) -> int:
    """Processes attached to a SysV shared memory segment (Linux `/proc/sysvipc/shm`; 0 if unknown)."""
    try:
        lines = Path("/proc/sysvipc/shm").read_text().splitlines()
    except OSError:
        return 0
    columns = lines[0].split() if lines else []
    if "shmid" not in columns or "nattch" not in columns:
        return 0
    for line in lines[1:]:
        fields = line.split()
        if len(fields) == len(columns) and fields[columns.index("shmid")] == str(shmid):
            return int(fields[columns.index("nattch")])
    return 0
