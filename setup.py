"""Build hook: generate the gRPC code (wxlogin/, never committed) before setuptools packs anything.

Everything else about the package is in pyproject.toml. This file exists for two
things a static pyproject cannot say:
- every wheel and sdist must carry `wxlogin/` (the generated stubs), so it is
  generated here, from protos/, by the same protoc call as `make proto`, before
  setuptools looks for packages; a fresh clone's `pip wheel .` therefore works
  (grpcio-tools and mypy-protobuf are build requirements), and a build that
  cannot generate it stops with one line saying why;
- the generated code checks, at import, that the protobuf runtime is at least
  the version it was generated for (and of the same major), so the protobuf
  requirement is computed from the code just generated, not guessed.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
PROTO = "protos/wxlogin/v1/auth.proto"
GENERATED = ROOT / "wxlogin" / "v1"
MODULES = ("auth_pb2.py", "auth_pb2_grpc.py")
# The client library's own dependencies; the servers' are the `server` extra (pyproject.toml).
CLIENT_DEPENDENCIES = [
    "grpcio>=1.62,<2",
    "grpcio-health-checking>=1.62,<2",
    "grpcio-status>=1.62,<2",
    "googleapis-common-protos>=1.62,<2",
    "aiohttp>=3.12,<4",  # client middlewares: one request per WeChat attempt; bearer_auth
]


def _fail(message: str) -> None:
    sys.exit(f"wxlogin build: {message}")


def _stale() -> bool:
    proto = ROOT / PROTO
    outputs = [GENERATED / name for name in MODULES]
    if not all(path.exists() for path in outputs):
        return True
    return any(path.stat().st_mtime < proto.stat().st_mtime for path in outputs)


def generate() -> None:
    """protoc into wxlogin/ unless what is there is newer than the .proto."""
    if not (ROOT / PROTO).exists():
        # An sdist carries the generated code, and no protos/ to regenerate it from.
        if not all((GENERATED / name).exists() for name in MODULES):
            _fail(f"neither {PROTO} nor the generated wxlogin/ is here")
        return
    if not _stale():
        return
    try:
        import grpc_tools
        from grpc_tools import protoc
    except ImportError:
        _fail(
            "generating wxlogin/ needs grpcio-tools: a build with isolation installs it; "
            "without (--no-build-isolation), pip install grpcio-tools mypy-protobuf first, "
            "or run `make proto`"
        )
    args = [
        "grpc_tools.protoc",
        "-I",
        "protos",
        "-I",
        str(Path(grpc_tools.__file__).parent / "_proto"),  # google/protobuf/*.proto
        "--python_out=.",
        "--grpc_python_out=.",
    ]
    # Type stubs too, when mypy-protobuf is there (a build requirement): typed clients.
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    mypy_plugin = shutil.which("protoc-gen-mypy", path=search)
    mypy_grpc_plugin = shutil.which("protoc-gen-mypy_grpc", path=search)
    if mypy_plugin and mypy_grpc_plugin:
        args += [
            f"--plugin=protoc-gen-mypy={mypy_plugin}",
            f"--plugin=protoc-gen-mypy_grpc={mypy_grpc_plugin}",
            "--mypy_out=.",
            "--mypy_grpc_out=.",
        ]
    GENERATED.mkdir(parents=True, exist_ok=True)
    here = Path.cwd()
    os.chdir(ROOT)
    try:
        if protoc.main([*args, PROTO]) != 0:
            _fail(f"protoc failed on {PROTO}")
    finally:
        os.chdir(here)
    for package in (ROOT / "wxlogin", GENERATED):
        (package / "__init__.py").touch()


def protobuf_requirement() -> str:
    """protobuf >= the version the generated code names, below its next major."""
    text = (GENERATED / "auth_pb2.py").read_text()
    found = re.search(r"Protobuf Python Version: (\d+)\.(\d+)\.(\d+)", text)
    if found is None:  # older generators write no version and accept any 5.x or later
        return "protobuf>=5.26"
    major = int(found.group(1))
    return f"protobuf>={found.group(1)}.{found.group(2)}.{found.group(3)},<{major + 1}"


generate()
setup(install_requires=[*CLIENT_DEPENDENCIES, protobuf_requirement()])
