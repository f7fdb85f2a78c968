"""Dev-stack children: `python -m MODULE` processes started in order, stopped in reverse."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from runtime.process import LISTENING, dies_with_parent

log = logging.getLogger(__name__)


class ChildError(RuntimeError):
    """A child did not start; the message says which and why, in one line."""


class Child:
    """`python -m MODULE ARGS...` started in its own session, stopped with SIGTERM."""

    def __init__(
        self,
        name: str,
        module_args: Sequence[str],
        env: Mapping[str, str],
        *,
        log_file: Path | None = None,
    ) -> None:
        self.name = name
        self._argv = [sys.executable, "-m", *module_args]
        self._env = dict(env)
        self._log_file = log_file
        self._log_handle: IO[bytes] | None = None
        self.process: asyncio.subprocess.Process | None = None
        self.port = 0

    async def start(self, ready_timeout: float = 60.0) -> int:
        """Start the child and wait for its 'listening on' line; returns the port."""
        stderr: int | IO[bytes] | None = None  # inherit: `make run` shows every log
        if self._log_file is not None:
            self._log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log_handle = self._log_file.open("ab")
            stderr = self._log_handle
        self.process = await asyncio.create_subprocess_exec(
            *dies_with_parent(self._argv),
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            # Own session: Ctrl-C reaches only the supervisor, which stops the
            # children in order (edge, service, emulator, then mongod).
            start_new_session=True,
        )
        assert self.process.stdout is not None
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), ready_timeout)
        except TimeoutError:
            line = b""
        match = LISTENING.search(line)
        if match is None:
            await self.stop()
            where = f"; see {self._log_file}" if self._log_file else ""
            raise ChildError(f"{self.name} did not start (exit {self.process.returncode}){where}")
        self.port = int(match.group(1))
        return self.port

    @property
    def exited(self) -> bool:
        return self.process is not None and self.process.returncode is not None

    async def wait(self) -> int:
        assert self.process is not None
        return await self.process.wait()

    async def stop(self, grace: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds."""
        process = self.process
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), grace)
            except TimeoutError:
                log.warning("%s ignored SIGTERM for %.0fs; killing it", self.name, grace)
                process.kill()
                await process.wait()
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
