"""WXLOGIN_WORKERS=N: a parent that runs N copies of a server on one port and keeps them running.

Design (README, "Workers"): each worker is a whole `python -m service` (or
`clients.edge`) process that binds the same address with SO_REUSEPORT, so the
kernel spreads new connections over them; they share nothing but MongoDB. The
parent only supervises: it starts the workers, prints the one "listening on"
line once all of them are ready, replaces a worker that dies (logged, with a
backoff so a crash loop does not spin), forwards SIGHUP, and on SIGTERM or
SIGINT forwards SIGTERM to every worker so that they all drain together, then
exits once they have (0 when every worker stopped cleanly).

- Port 0 with N > 1: the parent picks the port. It binds a SO_REUSEPORT socket
  to port 0 and keeps it, bound but never listening, for its whole life (so
  nobody else takes the port while a worker is being replaced); the workers
  get that concrete port. A bound socket that does not listen receives no
  connections.
- Metrics: worker i (0-based) serves /metrics on the configured port + i
  (port 0: each worker a free port of its own, logged); the parent serves none.
- Orphans: every worker asks the kernel for SIGTERM when its parent dies
  (PR_SET_PDEATHSIG, `become_worker`), and exits at once if the parent is gone
  already, so a SIGKILLed parent leaves no worker behind (they drain and stop).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass

from runtime.config import ConfigError, ListenAddress
from runtime.process import LISTENING
from runtime.serve import StopSignal, stop_on_signals, until_stopped

# Set by the parent in each worker's environment; not for operators.
INDEX_VARIABLE = "WXLOGIN_WORKER_INDEX"
PARENT_VARIABLE = "WXLOGIN_WORKER_PARENT"
WORKERS_VARIABLE = "WXLOGIN_WORKERS"
# A worker that has not said "listening on" within this long is stuck: replaced.
READY_SECONDS = 120.0
# A worker that lived this long was healthy: its death restarts it without delay.
STABLE_SECONDS = 10.0
# Restart delays after quick deaths: 0.5 s, 1 s, 2 s ... at most 30 s.
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
# After forwarding SIGTERM the parent waits the drain, the grace and this margin, then SIGKILLs.
STOP_MARGIN = 20.0
# linux/prctl.h
_PR_SET_PDEATHSIG = 1

log = logging.getLogger("workers")


def is_worker(env: Mapping[str, str]) -> bool:
    """True in a process the supervising parent started."""
    return INDEX_VARIABLE in env


def become_worker(env: Mapping[str, str]) -> None:
    """In a worker: die with the parent (SIGTERM from the kernel); a no-op elsewhere."""
    if not is_worker(env):
        return
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            log.warning("PR_SET_PDEATHSIG failed: this worker may outlive its parent")
    # The parent may have died between starting us and the prctl above.
    if str(os.getppid()) != env.get(PARENT_VARIABLE):
        print("worker: its supervising parent is gone", file=sys.stderr)
        sys.exit(1)


@dataclass(frozen=True)
class Program:
    """What the parent runs N times, and the variables it rewrites for each worker."""

    name: str  # "service", "edge": for log lines
    argv: Sequence[str]  # e.g. [sys.executable, "-m", "service"]
    listen_variable: str  # WXLOGIN_GRPC_LISTEN, WXLOGIN_HTTP_LISTEN
    listen: ListenAddress
    metrics_variable: str | None = None
    metrics: ListenAddress | None = None
    # Bounds the parent's wait for a worker to stop after SIGTERM.
    stop_seconds: float = 60.0
    # Whether the program reloads on SIGHUP (the service: callers, certificates).
    reloads: bool = False


def check_workers(program: Program, workers: int) -> None:
    """ConfigError (naming WXLOGIN_WORKERS) for a set-up N workers cannot share."""
    metrics = program.metrics
    if metrics is not None and metrics.port and metrics.port + workers - 1 > 65535:
        raise ConfigError(
            WORKERS_VARIABLE,
            f"{workers} workers need metrics ports {metrics.port}-{metrics.port + workers - 1} "
            f"({program.metrics_variable} + worker index), beyond 65535",
        )


def worker_environment(
    program: Program, index: int, listen: ListenAddress, env: Mapping[str, str]
) -> dict[str, str]:
    """Worker `index`'s environment: the shared address, its own metrics port, who its parent is."""
    worker = {
        **env,
        INDEX_VARIABLE: str(index),
        PARENT_VARIABLE: str(os.getpid()),
        program.listen_variable: str(listen),
    }
    metrics = program.metrics
    if metrics is not None and program.metrics_variable is not None:
        # Port + index, so each worker's /metrics is scraped on its own; 0 stays 0 (any port).
        port = metrics.port + index if metrics.port else 0
        worker[program.metrics_variable] = str(ListenAddress(metrics.host, port))
    return worker


def supervise(program: Program, workers: int, env: Mapping[str, str]) -> int:
    """Run `workers` copies of `program` until SIGTERM/SIGINT; the parent's exit code."""
    check_workers(program, workers)
    return asyncio.run(_Supervisor(program, workers, env).run())


@dataclass
class _Slot:
    """One worker position: the process filling it now, and how its last ones fared."""

    index: int
    # The first worker's outcome: None once it is ready, else its exit code.
    ready: asyncio.Future[int | None]
    process: asyncio.subprocess.Process | None = None
    quick_deaths: int = 0


class _Supervisor:
    def __init__(self, program: Program, workers: int, env: Mapping[str, str]) -> None:
        self._program = program
        self._env = dict(env)
        self._workers = workers
        self._slots: list[_Slot] = []
        self._readers: set[asyncio.Task[None]] = set()
        self._clean = True

    async def run(self) -> int:
        stop = stop_on_signals()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self._hangup)
        self._slots = [_Slot(index, loop.create_future()) for index in range(self._workers)]
        with _Reservation(self._program.listen) as listen:
            tasks = [asyncio.create_task(self._keep(slot, listen, stop)) for slot in self._slots]
            try:
                all_ready = asyncio.gather(*(slot.ready for slot in self._slots))
                if not await until_stopped(stop, asyncio.shield(all_ready)):
                    failed = [code for code in all_ready.result() if code is not None]
                    if failed:
                        # A worker that cannot start the first time (bad configuration,
                        # MongoDB unreachable) would not start the next time either.
                        log.error("a %s worker could not start: stopping", self._program.name)
                        self._clean = False
                        return failed[0] or 1
                    print(self._ready_line(listen), flush=True)
                    log.info(
                        "%d %s workers on %s (pids %s)",
                        len(self._slots),
                        self._program.name,
                        listen,
                        ", ".join(str(s.process.pid) for s in self._slots if s.process),
                    )
                    await stop.wait()
                log.info("stopping: SIGTERM to every worker; they drain together")
            finally:
                stop.set()
                self._forward(signal.SIGTERM)
                # A SIGINT to the stopping parent cuts every worker's drain short too.
                again = asyncio.create_task(self._forward_again(stop))
                await asyncio.gather(*tasks, return_exceptions=True)
                again.cancel()
        log.info("every worker stopped")
        return 0 if self._clean else 1

    def _ready_line(self, listen: ListenAddress) -> str:
        # The same line a single process prints: launchers and tests read the port from it.
        if self._program.name == "edge":
            return f"edge listening on http://{listen.url_host}:{listen.port}"
        return f"wxlogin {self._program.name} listening on port {listen.port}"

    async def _forward_again(self, stop: StopSignal) -> None:
        await stop.again.wait()
        self._forward(signal.SIGINT)

    def _hangup(self) -> None:
        if self._program.reloads:
            log.info("SIGHUP: forwarded to every worker (reload)")
            self._forward(signal.SIGHUP)
        else:
            log.info("SIGHUP: the %s has nothing to reload", self._program.name)

    def _forward(self, signum: int) -> None:
        for slot in self._slots:
            if slot.process is not None and slot.process.returncode is None:
                with suppress(ProcessLookupError):
                    slot.process.send_signal(signum)

    async def _keep(self, slot: _Slot, listen: ListenAddress, stop: StopSignal) -> None:
        """Fill `slot` until the parent stops: start a worker, wait for it, replace it."""
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            started = loop.time()
            process = slot.process = await asyncio.create_subprocess_exec(
                *self._program.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                # Workers log to the parent's stderr directly: one stream, as with one process.
                env=worker_environment(self._program, slot.index, listen, self._env),
            )
            if await self._await_ready(process, stop):
                if not slot.ready.done():
                    slot.ready.set_result(None)
                elif slot.quick_deaths:
                    log.info("worker %d is back (pid %d)", slot.index, process.pid)
                returncode = await self._until_exit_or_stop(process, stop)
            else:
                returncode = await self._stop_worker(process)
                if not slot.ready.done():
                    slot.ready.set_result(returncode or 1)
                    return
            if stop.is_set():
                # run() has sent it SIGTERM already: a second one would cut its drain short.
                if await self._stop_worker(process, signalled=True) != 0:
                    log.error(
                        "worker %d (pid %d) stopped with %s",
                        slot.index,
                        process.pid,
                        _exit_text(process.returncode or 0),
                    )
                    self._clean = False
                return
            lived = loop.time() - started
            slot.quick_deaths = 0 if lived >= STABLE_SECONDS else slot.quick_deaths + 1
            delay = (
                min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (slot.quick_deaths - 1))
                if slot.quick_deaths
                else 0.0
            )
            log.warning(
                "worker %d (pid %d) %s after %.1fs; replacing it%s",
                slot.index,
                process.pid,
                _exit_text(returncode),
                lived,
                f" in {delay:g}s ({slot.quick_deaths} quick death(s) in a row)" if delay else "",
            )
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    async def _await_ready(self, process: asyncio.subprocess.Process, stop: StopSignal) -> bool:
        """Read the worker's "listening on" line; False when it exits, hangs or we stop first."""
        assert process.stdout is not None
        line = asyncio.ensure_future(process.stdout.readline())
        try:
            await asyncio.wait_for(until_stopped(stop, line), READY_SECONDS)
        except TimeoutError:
            log.error("worker pid %d not ready within %gs", process.pid, READY_SECONDS)
            return False
        finally:
            line.cancel()
        if stop.is_set() or line.cancelled() or LISTENING.search(line.result()) is None:
            return False
        # Nothing else is written to stdout; drained all the same so a stray print never blocks.
        reader = asyncio.create_task(_drain(process.stdout))
        self._readers.add(reader)  # held: the loop keeps only a weak reference
        reader.add_done_callback(self._readers.discard)
        return True

    async def _until_exit_or_stop(
        self, process: asyncio.subprocess.Process, stop: StopSignal
    ) -> int:
        exited = asyncio.ensure_future(process.wait())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait([exited, stopped], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not exited.done():
            exited.cancel()
            return 0
        return exited.result()

    async def _stop_worker(
        self, process: asyncio.subprocess.Process, *, signalled: bool = False
    ) -> int:
        """SIGTERM (drain) unless `signalled`, SIGKILL past the bound; the worker's exit code."""
        if process.returncode is None:
            if not signalled:
                with suppress(ProcessLookupError):
                    process.terminate()
            try:
                await asyncio.wait_for(process.wait(), self._program.stop_seconds + STOP_MARGIN)
            except TimeoutError:
                log.error("worker pid %d did not stop: killed", process.pid)
                with suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        assert process.returncode is not None
        return process.returncode


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(4096):
        pass


def _exit_text(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


class _Reservation:
    """The listen address with port 0 resolved: a SO_REUSEPORT socket held, bound, not listening."""

    def __init__(self, listen: ListenAddress) -> None:
        self._listen = listen
        self._socket: socket.socket | None = None

    def __enter__(self) -> ListenAddress:
        if self._listen.port != 0:
            return self._listen
        family = socket.AF_INET6 if ":" in self._listen.host else socket.AF_INET
        held = socket.socket(family, socket.SOCK_STREAM)
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            held.bind((self._listen.host, 0))
        except OSError as error:
            held.close()
            raise ConfigError(
                "WXLOGIN_WORKERS", f"cannot reserve a port on {self._listen.host}: {error.strerror}"
            ) from None
        self._socket = held
        return ListenAddress(self._listen.host, int(held.getsockname()[1]))

    def __exit__(self, *_: object) -> None:
        if self._socket is not None:
            self._socket.close()
