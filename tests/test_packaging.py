"""The installable artifact: a wheel built from the tracked files, installed into fresh venvs.

The server venv runs the service, the edge and the emulator from their console
scripts, outside the checkout, and a login goes through them; the client-only
venv has none of the servers' dependencies and still calls the service.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
import venv
import zipfile
from collections.abc import Mapping
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import b64_secret_key
from tests.support import APP_A, APPS_ENV, QUICK_STOP, program

ROOT = Path(__file__).resolve().parents[1]
SERVER_ONLY = ("pymongo", "cryptography", "prometheus_client")
# Never in any install: the store runs on pymongo's own asyncio API.
NEVER = ("motor",)
SCRIPTS = ("wxlogin-service", "wxlogin-edge", "wxlogin-emulator", "wxlogin-admin")
# Building and installing: bounded, but pip may fetch from the package index.
INSTALL_SECONDS = 600


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without anything that points Python at the checkout."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
        and not key.startswith("COV")  # coverage's subprocess hook is not in those venvs
    }
    return {**env, **QUICK_STOP, **extra}


def run(argv: list[str], *, cwd: Path, env: Mapping[str, str] | None = None) -> str:
    """Run to completion (bounded); fail with its output; return stdout."""
    done = subprocess.run(
        argv,
        cwd=cwd,
        env=dict(env or clean_env()),
        capture_output=True,
        text=True,
        timeout=INSTALL_SECONDS,
        check=False,
    )
    assert done.returncode == 0, (argv, done.stdout[-2000:], done.stderr[-3000:])
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `pip wheel` makes of a copy of a clone (no wxlogin/, no .venv)."""
    source = tmp_path_factory.mktemp("fresh-clone")
    # Tracked files and new ones not ignored: the working tree as it would be committed.
    listing = [shutil.which("git") or "git", "ls-files", "-z", "--cached", "--others"]
    tracked = subprocess.run(
        [*listing, "--exclude-standard"], cwd=ROOT, capture_output=True, check=True, timeout=60
    ).stdout.split(b"\0")
    for name in filter(None, tracked):
        path = ROOT / name.decode()
        if path.is_file():
            (source / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, source / name.decode())
    assert not (source / "wxlogin").exists()
    dist = tmp_path_factory.mktemp("dist")
    # No build isolation: this venv has the build requirements (grpcio-tools,
    # mypy-protobuf), so no download; codegen still runs, as in a fresh clone.
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--quiet", "-w", str(dist), str(source)],
        cwd=source,
    )  # fmt: skip
    (built,) = dist.glob("wxlogin-*.whl")
    return built


def new_venv(where: Path) -> Path:
    """A fresh virtualenv (with pip, without this one's packages); its python."""
    venv.EnvBuilder(with_pip=True, clear=True).create(where)
    return where / "bin" / "python"


def installed(python: Path, cwd: Path) -> set[str]:
    """The normalized names of the distributions a venv has."""
    out = run(
        [str(python), "-c", "import importlib.metadata as m, json; "
         "print(json.dumps([d.metadata['Name'] for d in m.distributions()]))"],
        cwd=cwd,
    )  # fmt: skip
    return {name.lower().replace("-", "_") for name in json.loads(out)}


@pytest.fixture(scope="module")
def server_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip install 'wxlogin[server]'` from the wheel into a new venv; its bin/."""
    where = tmp_path_factory.mktemp("server-venv")
    python = new_venv(where / "venv")
    # The wheel by its path: the project comes from it, never from an index.
    run([str(python), "-m", "pip", "install", "--quiet", f"{wheel}[server]"], cwd=where)
    return python.parent


@pytest.fixture(scope="module")
def client_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip install wxlogin` (no extra: the client library) from the wheel; its bin/."""
    where = tmp_path_factory.mktemp("client-venv")
    python = new_venv(where / "venv")
    run([str(python), "-m", "pip", "install", "--quiet", str(wheel)], cwd=where)
    return python.parent


def test_the_wheel_carries_the_generated_code_and_the_scripts(wheel: Path) -> None:
    """Codegen ran in the build: wxlogin/v1 stubs (and type stubs) and the console scripts."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(
            archive.read(name).decode() for name in names if name.endswith("entry_points.txt")
        )
        metadata = next(archive.read(n).decode() for n in names if n.endswith("/METADATA"))
    assert {"wxlogin/v1/auth_pb2.py", "wxlogin/v1/auth_pb2_grpc.py"} <= names
    assert "wxlogin/v1/auth_pb2.pyi" in names
    assert not any(name.startswith(("tests/", "bench/")) for name in names)
    for script in SCRIPTS:
        assert f"{script} = " in entry_points
    # The protobuf runtime the generated code checks for at import.
    assert "Requires-Dist: protobuf" in metadata
    for package in ("pymongo", "cryptography", "prometheus_client"):
        assert f"Requires-Dist: {package}" in metadata
        assert any(
            line.startswith(f"Requires-Dist: {package}") and 'extra == "server"' in line
            for line in metadata.splitlines()
        )


def test_the_client_library_installs_without_the_servers_dependencies(
    client_venv: Path, tmp_path: Path
) -> None:
    """`pip install wxlogin`: clients imports; no pymongo, motor, cryptography or prometheus."""
    python = client_venv / "python"
    assert not installed(python, tmp_path) & {*SERVER_ONLY, *NEVER}
    out = run(
        [str(python), "-c", "import clients, clients.aiohttp_auth, clients.grpc_auth, wxlogin; "
         "print(clients.__file__)"],
        cwd=tmp_path,
    )  # fmt: skip
    assert out.strip().startswith(str(client_venv.parent))
    # The servers' scripts say what is missing instead of a traceback.
    done = subprocess.run(
        [str(client_venv / "wxlogin-service")],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "pip install 'wxlogin[server]'" in done.stderr
    assert "Traceback" not in done.stderr


async def test_the_installed_programs_log_a_user_in(
    server_venv: Path, client_venv: Path, mongod: str, tmp_path: Path
) -> None:
    """From the console scripts, outside the checkout: emulator, service, edge; a login via HTTP."""
    python = server_venv / "python"
    out = run([str(python), "-c", "import service, clients; print(service.__file__)"], cwd=tmp_path)
    assert out.strip().startswith(str(server_venv.parent)), out  # not the checkout's
    assert set(SERVER_ONLY) <= installed(python, tmp_path)
    assert not installed(python, tmp_path) & set(NEVER)
    emulator_argv = [str(server_venv / "wxlogin-emulator"), "--listen", "127.0.0.1:0"]
    async with program([*emulator_argv, "--apps", APPS_ENV], env=clean_env(), cwd=tmp_path) as (
        _,
        emulator_port,
    ):
        emulator = f"http://127.0.0.1:{emulator_port}"
        service_env = clean_env(
            WXLOGIN_APPS=APPS_ENV,
            WXLOGIN_SECRET_KEY=b64_secret_key(),
            WXLOGIN_GRPC_LISTEN="127.0.0.1:0",
            WXLOGIN_MONGODB_URI=mongod,
            WXLOGIN_WECHAT_API_BASE=emulator,
        )
        async with program(
            [str(server_venv / "wxlogin-service")], env=service_env, cwd=tmp_path
        ) as (_, grpc_port):
            edge_env = clean_env(
                WXLOGIN_UPSTREAM=f"127.0.0.1:{grpc_port}", WXLOGIN_HTTP_LISTEN="127.0.0.1:0"
            )
            async with (
                program([str(server_venv / "wxlogin-edge")], env=edge_env, cwd=tmp_path) as (
                    _,
                    http_port,
                ),
                aiohttp.ClientSession() as http,
            ):
                user = f"pkg-{uuid.uuid4().hex[:8]}"
                async with http.post(
                    f"{emulator}/_dev/login", json={"appid": APP_A, "user": user}
                ) as response:
                    code = (await response.json())["code"]
                edge = f"http://127.0.0.1:{http_port}"
                async with http.post(
                    f"{edge}/v1/login", json={"app_id": APP_A, "code": code}
                ) as response:
                    assert response.status == 200
                    login = await response.json()
                headers = {"Authorization": f"Bearer {login['token']}"}
                async with http.get(f"{edge}/v1/session", headers=headers) as response:
                    assert response.status == 200
                    assert (await response.json())["user"]["user_id"] == login["user"]["user_id"]
            # The installed operator's CLI finds the user through the same configuration.
            found = run(
                [str(server_venv / "wxlogin-admin"), "--json", "user", login["user"]["user_id"]],
                cwd=tmp_path,
                env=service_env,
            )
            assert login["user"]["openid"] in found
            assert login["token"] not in found
            # The client-only install calls the installed service directly.
            script = (
                "import asyncio, sys\n"
                "from clients import connect\n"
                "async def main():\n"
                f"    async with connect('127.0.0.1:{grpc_port}') as client:\n"
                "        session = await client.check_session(sys.argv[1])\n"
                "        print(session.user.user_id)\n"
                "asyncio.run(main())\n"
            )
            out = run(
                [str(client_venv / "python"), "-c", script, login["token"]],
                cwd=tmp_path,
                env=clean_env(),
            )
            assert out.strip() == login["user"]["user_id"]
