"""A real N-member MongoDB replica set of embedded mongods, for tests and the dev stack."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.errors import OperationFailure, PyMongoError

from service.embedded_mongo import EmbeddedMongo, EmbeddedMongoError, free_port

log = logging.getLogger(__name__)

# Server error codes: the set was never initiated; this node is not in the config it holds.
_NOT_YET_INITIALIZED, _INVALID_REPLICA_SET_CONFIG = 94, 93

# Why short: MongoDB's defaults (10 s election timeout, 2 s heartbeats) are made
# for networks that hiccup; on loopback they only make every failover in a test
# or at a desk wait ~12 s. 2 s / 0.5 s still tolerates a busy 2-core machine's
# stalls and elects a new primary in a few seconds.
_SETTINGS = {"electionTimeoutMillis": 2000, "heartbeatIntervalMillis": 500}

MongoClient = AsyncMongoClient[dict[str, Any]]


class ReplicaSetError(EmbeddedMongoError):
    """The replica set did not start or did not reach the state asked for; says why in one line."""


class ReplicaSet:
    """`members` mongods on 127.0.0.1, one replica set; data and ports kept under `data_dir`.

    Each member keeps its port in its own directory, so a set started again on
    the same data dir (the dev stack after a restart) finds itself at the same
    hosts; when a port was taken meanwhile, the set is reconfigured to the new one.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        members: int = 3,
        name: str = "wxlogin-rs",
        ttl_monitor_seconds: int | None = None,
    ) -> None:
        if members < 1:
            raise ValueError("a replica set needs at least one member")
        self.data_dir = data_dir
        self.name = name
        self.members = [
            EmbeddedMongo(
                data_dir / f"member-{index}",
                port=_saved_port(data_dir / f"member-{index}"),
                ttl_monitor_seconds=ttl_monitor_seconds,
                replica_set=name,
            )
            for index in range(members)
        ]

    @property
    def uri(self) -> str:
        """The URI a driver uses: every member, the set's name, no direct connection."""
        hosts = ",".join(_host(member) for member in self.members)
        return f"mongodb://{hosts}/?replicaSet={self.name}"

    async def start(self, wait_seconds: float = 60.0) -> str:
        """Start every member, initiate the set, wait until all are up and one leads; its URI."""
        try:
            results = await asyncio.gather(
                *(member.start(wait_seconds) for member in self.members), return_exceptions=True
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            for member in self.members:
                (member.data_dir / "port").write_text(str(member.port))
            try:
                await self._initiate()
            except PyMongoError as error:
                raise ReplicaSetError(
                    f"replica set {self.name}: cannot initiate: {error}"
                ) from None
            await self.wait_healthy(wait_seconds)
        except BaseException:
            await self.stop()
            raise
        log.info("replica set %s up: %s", self.name, self.uri)
        return self.uri

    async def stop(self, wait_seconds: float = 15.0) -> None:
        """SIGTERM every member (killed after `wait_seconds`); no process is left either way."""
        await asyncio.gather(*(member.stop(wait_seconds) for member in self.members))

    async def kill(self, index: int) -> None:
        """SIGKILL one member, as a crash or a pulled plug would."""
        await self.members[index].kill()

    async def restart(self, index: int, wait_seconds: float = 60.0) -> None:
        """Start a killed or stopped member again, on its port and data; it rejoins the set."""
        await self.members[index].start(wait_seconds)

    async def primary_index(self) -> int | None:
        """Which member says it is the writable primary right now; None while there is none."""
        running = [index for index, member in enumerate(self.members) if member.pid is not None]
        answers = await asyncio.gather(*(self._hello(index) for index in running))
        for index, hello in zip(running, answers, strict=True):
            if hello is not None and hello.get("isWritablePrimary"):
                return index
        return None

    async def wait_for_primary(self, wait_seconds: float = 30.0) -> int:
        """Until some member is the writable primary; its index."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + wait_seconds
        while True:
            index = await self.primary_index()
            if index is not None:
                return index
            if loop.time() > give_up:
                raise ReplicaSetError(
                    f"replica set {self.name}: no primary after {wait_seconds:.0f}s "
                    f"(logs: {self.data_dir}/member-*/mongod.log)"
                )
            await asyncio.sleep(0.2)

    async def member_states(self) -> dict[int, str]:
        """Index -> state ("PRIMARY", "SECONDARY", "RECOVERING", ...) of each member seen up.

        As the first running member that answers sees them; members it cannot
        reach are left out.
        """
        by_host = {_host(member): index for index, member in enumerate(self.members)}
        for index, member in enumerate(self.members):
            if member.pid is None:
                continue
            with contextlib.suppress(PyMongoError):
                async with self._client(index) as client:
                    status = await client.admin.command("replSetGetStatus")
                return {
                    by_host[item["name"]]: str(item["stateStr"])
                    for item in status["members"]
                    if item["name"] in by_host and item.get("health", 1) == 1
                }
        return {}

    async def wait_healthy(self, wait_seconds: float = 60.0) -> int:
        """Until every member is running and is the primary or a secondary; the primary's index."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + wait_seconds
        while True:
            states = await self.member_states()
            values = list(states.values())
            if (
                len(values) == len(self.members)
                and values.count("PRIMARY") == 1
                and set(values) <= {"PRIMARY", "SECONDARY"}
            ):
                primary = await self.primary_index()
                if primary is not None:
                    return primary
            if loop.time() > give_up:
                raise ReplicaSetError(
                    f"replica set {self.name}: members not all up after {wait_seconds:.0f}s "
                    f"(states {states}; logs: {self.data_dir}/member-*/mongod.log)"
                )
            await asyncio.sleep(0.2)

    async def _initiate(self) -> None:
        """Initiate a new set, or point an existing one at the members' current ports."""
        config: dict[str, Any] = {
            "_id": self.name,
            "members": [
                {"_id": index, "host": _host(member)} for index, member in enumerate(self.members)
            ],
            "settings": _SETTINGS,
        }
        async with self._client(0) as client:
            try:
                await client.admin.command("replSetGetStatus")
            except OperationFailure as error:
                if error.code == _NOT_YET_INITIALIZED:
                    await client.admin.command("replSetInitiate", config)
                    return
                if error.code != _INVALID_REPLICA_SET_CONFIG:
                    raise
            # Initiated before: the config it keeps may name ports this run could
            # not get again. Only a forced reconfig can change hosts of a set
            # that has no primary, and nothing else runs against it yet.
            held = (await client.admin.command("replSetGetConfig"))["config"]
            if [member["host"] for member in held["members"]] == [
                member["host"] for member in config["members"]
            ]:
                return
            log.info("replica set %s: members moved to new ports; reconfiguring", self.name)
            config["version"] = int(held["version"]) + 1
            await client.admin.command("replSetReconfig", config, force=True)

    async def _hello(self, index: int) -> dict[str, Any] | None:
        with contextlib.suppress(PyMongoError):
            async with self._client(index) as client:
                reply: dict[str, Any] = await client.admin.command("hello")
                return reply
        return None

    @contextlib.asynccontextmanager
    async def _client(self, index: int) -> AsyncIterator[MongoClient]:
        # A fresh direct client per question: a client kept across a member's
        # kill and restart would answer from its stale view of that member.
        client: MongoClient = AsyncMongoClient(
            self.members[index].uri,
            serverSelectionTimeoutMS=1000,
            connectTimeoutMS=1000,
            socketTimeoutMS=5000,
        )
        try:
            yield client
        finally:
            await client.close()


def _host(member: EmbeddedMongo) -> str:
    return f"127.0.0.1:{member.port}"


def _saved_port(member_dir: Path) -> int:
    """The port this member had last time if it is still free, else a new free one."""
    try:
        port = int((member_dir / "port").read_text())
    except (OSError, ValueError):
        return free_port()
    with socket.socket() as probe:
        # As mongod binds: connections it closed last run (TIME_WAIT) must not
        # make its own port look taken.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return free_port()
    return port
