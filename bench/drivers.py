"""The MongoDB driver, measured: motor against PyMongo's AsyncMongoClient, the same work.

`python -m bench.drivers` (part of `make bench`) starts one mongod and, in turn, one worker
process per driver, each pinned to the same core, for several alternating rounds. Every
worker runs the same two loads against the same mongod with the store's durability
(`w: majority, j: true`):

- **Login batch**: the MongoDB work of one batch of 32 logins as the store did it before
  this round (claims, users' bulk upsert, the find of the existing users, the sessions'
  insert, the cap's trim read, the kept answers): six commands, half of the users
  returning;
- **CheckSession read**: a session read by _id from the primary, 64 at a time.

Each reports operations per second and the CPU it spent per operation (all its threads:
motor's thread pool included). CPU per operation is the figure that decides how many
logins a core serves; it drifts far less with a shared machine's load than throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bson import Binary, ObjectId
from pymongo import ReadPreference, UpdateOne, WriteConcern

from bench.procstat import pin
from bench.readme_block import rewrite_block

DRIVERS = ("motor", "pymongo")
DURABLE = WriteConcern(w="majority", j=True)
BATCH = 32
LOGIN_STREAMS = 2
READ_STREAMS = 64
RESULTS = Path(__file__).parent / "results" / "drivers.json"
README = Path(__file__).parent / "README.md"


def _client(driver: str, uri: str) -> Any:
    options: dict[str, Any] = {"tz_aware": True, "serverSelectionTimeoutMS": 3000}
    if driver == "motor":
        from motor.motor_asyncio import AsyncIOMotorClient

        return AsyncIOMotorClient(uri, **options)
    from pymongo import AsyncMongoClient

    return AsyncMongoClient(uri, **options)


async def _maybe(value: Any) -> Any:
    """motor's aggregate() returns its cursor; AsyncMongoClient's is a coroutine for it."""
    return await value if inspect.isawaitable(value) else value


async def _login_batch(db: Any, returning: list[str]) -> None:
    """The six commands of one batch of logins, as the store sent them before round 3."""
    now = datetime.now(UTC)
    codes = db.get_collection("login_codes", write_concern=DURABLE)
    users = db.get_collection("users", write_concern=DURABLE)
    sessions = db.get_collection("sessions", write_concern=DURABLE)
    primary_users = users.with_options(read_preference=ReadPreference.PRIMARY)
    openids = [
        returning[i % len(returning)] if i % 2 else f"new-{secrets.token_hex(6)}"
        for i in range(BATCH)
    ]
    code_ids = [secrets.token_hex(16) for _ in openids]
    await codes.insert_many(
        [{"_id": c, "state": "pending", "owner": "o", "expires_at": now} for c in code_ids],
        ordered=False,
    )
    await users.bulk_write(
        [
            UpdateOne(
                {"app_id": "wxbench", "openid": openid},
                {
                    "$set": {"last_login_at": now, "session_key": Binary(os.urandom(60))},
                    "$setOnInsert": {"_id": ObjectId(), "created_at": now},
                },
                upsert=True,
            )
            for openid in openids
        ],
        ordered=False,
    )
    found = primary_users.find({"app_id": "wxbench", "openid": {"$in": openids}}, {"_id": 1})
    ids = [doc["_id"] async for doc in found]
    docs = [
        {
            "_id": secrets.token_hex(32),
            "user_id": user_id,
            "app_id": "wxbench",
            "session_key": Binary(os.urandom(60)),
            "created_at": now,
            "expires_at": now + timedelta(days=7),
        }
        for user_id in ids
    ]
    await sessions.insert_many(docs, ordered=False)
    pipeline = [
        {"$match": {"user_id": {"$in": ids}, "expires_at": {"$gt": now}}},
        {"$sort": {"user_id": 1, "created_at": -1, "_id": -1}},
        {"$group": {"_id": "$user_id", "ids": {"$push": "$_id"}}},
        {"$project": {"excess": {"$slice": ["$ids", 10, 2**31 - 1]}}},
        {"$match": {"excess.0": {"$exists": True}}},
    ]
    cursor = await _maybe(
        sessions.with_options(read_preference=ReadPreference.PRIMARY).aggregate(pipeline)
    )
    [doc async for doc in cursor]
    await codes.bulk_write(
        [
            UpdateOne({"_id": c, "state": "pending"}, {"$set": {"state": "done", "result": b"x"}})
            for c in code_ids
        ],
        ordered=False,
    )


async def _timed_loop(work: Any, streams: int, seconds: float) -> tuple[int, float, float]:
    """Run `work()` in `streams` concurrent loops for `seconds`: (count, wall, CPU seconds)."""
    count = 0
    stop = time.monotonic() + seconds

    async def loop() -> None:
        nonlocal count
        while time.monotonic() < stop:
            await work()
            count += 1

    cpu, wall = time.process_time(), time.monotonic()
    await asyncio.gather(*(loop() for _ in range(streams)))
    return count, time.monotonic() - wall, time.process_time() - cpu


async def _worker(driver: str, uri: str, database: str, seconds: float) -> dict[str, Any]:
    client = _client(driver, uri)
    try:
        db = client[database]
        await db.users.create_index([("app_id", 1), ("openid", 1)], unique=True)
        await db.sessions.create_index([("user_id", 1), ("created_at", -1)])
        returning = [f"back-{i}" for i in range(256)]
        await _login_batch(db, returning)  # warm-up: connections, the returning users
        sessions = db.get_collection("sessions").with_options(
            read_preference=ReadPreference.PRIMARY
        )
        ids = [doc["_id"] async for doc in sessions.find({}, {"_id": 1}).limit(1000)]
        picks = iter(range(10**9))

        async def read() -> None:
            await sessions.find_one({"_id": ids[next(picks) % len(ids)]})

        await _timed_loop(read, READ_STREAMS, 0.5)  # warm-up
        batches, login_wall, login_cpu = await _timed_loop(
            lambda: _login_batch(db, returning), LOGIN_STREAMS, seconds
        )
        reads, read_wall, read_cpu = await _timed_loop(read, READ_STREAMS, seconds)
        return {
            "driver": driver,
            "logins_per_s": batches * BATCH / login_wall,
            "cpu_ms_per_login_batch": 1000 * login_cpu / max(batches, 1),
            "reads_per_s": reads / read_wall,
            "cpu_us_per_read": 1e6 * read_cpu / max(reads, 1),
        }
    finally:
        closing = client.close()
        if inspect.isawaitable(closing):
            await closing


async def _run(rounds: int, seconds: float, cores: list[int]) -> dict[str, Any]:
    from service.embedded_mongo import EmbeddedMongo

    with tempfile.TemporaryDirectory(prefix="wxlogin-drivers-") as tmp:
        mongo = EmbeddedMongo(Path(tmp) / "db")
        uri = await mongo.start()
        try:
            if mongo.pid is not None and len(cores) > 1:
                pin(mongo.pid, cores[1:])
            samples: dict[str, list[dict[str, Any]]] = {driver: [] for driver in DRIVERS}
            for round_number in range(rounds):
                # Alternate who goes first: a machine getting busier favours neither.
                order = DRIVERS if round_number % 2 == 0 else DRIVERS[::-1]
                for driver in order:
                    samples[driver].append(
                        _spawn(driver, uri, f"drivers_{driver}_{round_number}", seconds, cores[0])
                    )
        finally:
            await mongo.stop()
    return _summary(samples, rounds, seconds)


def _spawn(driver: str, uri: str, database: str, seconds: float, core: int) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.drivers", "--worker", driver, "--uri", uri]
    argv += ["--database", database, "--seconds", str(seconds)]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as child:
        pin(child.pid, [core])
        out, _ = child.communicate(timeout=seconds * 4 + 60)
    if child.returncode != 0:
        raise RuntimeError(f"the {driver} worker failed (exit {child.returncode})")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def _summary(
    samples: dict[str, list[dict[str, Any]]], rounds: int, seconds: float
) -> dict[str, Any]:
    keys = ("logins_per_s", "cpu_ms_per_login_batch", "reads_per_s", "cpu_us_per_read")
    median = {
        driver: {key: statistics.median(s[key] for s in runs) for key in keys}
        for driver, runs in samples.items()
    }
    motor, pymongo = median["motor"], median["pymongo"]
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "rounds": rounds,
        "seconds": seconds,
        "median": median,
        "samples": samples,
        "pymongo_over_motor": {
            "login_throughput": pymongo["logins_per_s"] / motor["logins_per_s"],
            "login_cpu": pymongo["cpu_ms_per_login_batch"] / motor["cpu_ms_per_login_batch"],
            "read_throughput": pymongo["reads_per_s"] / motor["reads_per_s"],
            "read_cpu": pymongo["cpu_us_per_read"] / motor["cpu_us_per_read"],
        },
    }


def table(result: dict[str, Any]) -> str:
    """The result as the Markdown table of bench/README.md."""
    median, ratio = result["median"], result["pymongo_over_motor"]
    rows = [
        f"Run of {result['when']}: {result['rounds']} alternating rounds of "
        f"{result['seconds']:.0f} s per driver and load, one worker process at a time "
        "on the same core, same mongod, `w: majority, j: true`; medians.",
        "",
        "| Load | motor | AsyncMongoClient | AsyncMongoClient / motor |",
        "|---|--:|--:|--:|",
        f"| Login batch ({BATCH} logins, 6 commands): logins/s, {LOGIN_STREAMS} batches at once "
        f"| {median['motor']['logins_per_s']:,.0f} | {median['pymongo']['logins_per_s']:,.0f} "
        f"| **{ratio['login_throughput']:.2f} x** |",
        f"| Login batch: CPU ms per batch | {median['motor']['cpu_ms_per_login_batch']:.1f} "
        f"| {median['pymongo']['cpu_ms_per_login_batch']:.1f} | **{ratio['login_cpu']:.2f} x** |",
        f"| CheckSession read: reads/s, {READ_STREAMS} at once "
        f"| {median['motor']['reads_per_s']:,.0f} | {median['pymongo']['reads_per_s']:,.0f} "
        f"| **{ratio['read_throughput']:.2f} x** |",
        f"| CheckSession read: CPU µs per read | {median['motor']['cpu_us_per_read']:.0f} "
        f"| {median['pymongo']['cpu_us_per_read']:.0f} | **{ratio['read_cpu']:.2f} x** |",
        "",
    ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.drivers", description=__doc__)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", choices=DRIVERS, help=argparse.SUPPRESS)
    parser.add_argument("--uri", help=argparse.SUPPRESS)
    parser.add_argument("--database", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(asyncio.run(_worker(args.worker, args.uri, args.database, args.seconds))))
        return 0
    cores = sorted(os.sched_getaffinity(0))
    result = asyncio.run(_run(args.rounds, args.seconds, cores))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    if args.out == RESULTS:
        rewrite_block(README, "bench:drivers", table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
