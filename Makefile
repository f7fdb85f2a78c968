# The interface people remember: make run, make test, make demo, make bench.
# Every target installs what it needs itself (virtualenv, packages, codegen).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTO_SRC := protos/wxlogin/v1/auth.proto
PROTO_OUT := wxlogin/v1/auth_pb2.py wxlogin/v1/auth_pb2_grpc.py wxlogin/v1/auth_pb2.pyi wxlogin/v1/auth_pb2_grpc.pyi

.PHONY: help venv tools buf node-client contract proto run service emulator edge test pytest lint typecheck check demo bench bench-smoke chaos rehearsal dist clean

help:
	@echo "make run        start the dev stack (embedded mongod, WeChat emulator, service, edge)"
	@echo "make test       install everything needed, then lint, typecheck and the whole test suite"
	@echo "make demo       walk a simulated mini-program through the flow against a dev stack"
	@echo "make bench      benchmarks against bare baselines (results in bench/results/)"
	@echo "make contract   buf lint + buf breaking on protos/ (against the merge base with main)"
	@echo "make dist       the wheel: pip install 'dist/wxlogin-*.whl[server]' (README, Installing)"
	@echo "make rehearsal  production rehearsal: replica set, 2 services, 2 edges, HAProxy, faults"
	@echo "make lint | typecheck | check | proto | clean"

venv: $(STAMP)

# Re-install whenever the dependency list changes.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "wxlogin needs Python 3.11+")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# compat mode puts the checkout itself on sys.path, so the generated wxlogin/
	@# package (made after this install) is importable from anywhere too.
	$(PY) -m pip install --quiet -e '.[server,dev,bench]' --config-settings editable_mode=compat
	touch $@

proto: $(PROTO_OUT)

# One rule makes all four files; grouped target (&:) so make runs it once.
$(PROTO_OUT) &: $(PROTO_SRC) $(STAMP)
	mkdir -p wxlogin/v1
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m grpc_tools.protoc -I protos \
	    --python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. $(PROTO_SRC)
	touch wxlogin/__init__.py wxlogin/v1/__init__.py $(PROTO_OUT)

run: proto
	$(PY) -m devtools.devstack

service: proto
	$(PY) -m service

emulator: proto
	$(PY) -m emulator

edge: proto
	$(PY) -m clients.edge

# The programs the suite drives besides Python: h2load and wrk (bench smoke),
# node and npm (the mini-program sample's and the Node client's tests, buf), haproxy and
# nghttp (its gRPC health check) for the rehearsal. Installed with apt when missing.
TOOLS := h2load:nghttp2-client nghttp:nghttp2-client wrk:wrk node:nodejs npm:npm promtool:prometheus haproxy:haproxy
tools:
	@missing=""; for pair in $(TOOLS); do \
	    command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	    echo "installing with apt:$$missing"; \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# npm packages, each into a project-local node_modules (git-ignored), installed
# only when missing or when the lock file changed: buf from ./package.json, and
# the Node client's own dependencies from clients/node/package.json.
BUF := node_modules/.bin/buf
NODE_CLIENT_DEPS := clients/node/node_modules/.package-lock.json

$(BUF): package.json package-lock.json | tools
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(NODE_CLIENT_DEPS): clients/node/package.json clients/node/package-lock.json | tools
	cd clients/node && npm ci --no-audit --no-fund --loglevel=error
	touch $@

buf: $(BUF)

node-client: $(NODE_CLIENT_DEPS)

# The proto is the API of every backend, in any language: buf lint (buf.yaml),
# then buf breaking against the proto this commit started from (devtools/contract.py:
# the merge base with main on a branch, the previous commit on main itself).
contract: $(BUF) $(STAMP)
	$(PY) -m devtools.contract --buf $(BUF)

# What CI runs (.ci/run): the house rules first, then every test with branch coverage.
test: lint typecheck contract pytest

check: test

pytest: proto tools $(BUF) $(NODE_CLIENT_DEPS)
	$(PY) -m pytest --cov --cov-report=term

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: proto
	$(PY) -m mypy

demo: proto
	$(PY) -m devtools.demo

# Needs the C load generators; `tools` installs them when missing.
bench: proto tools
	$(PY) -m bench --profile
	$(PY) -m bench.drivers
	$(PY) -m bench.login_floor

bench-smoke: proto tools
	$(PY) -m bench --smoke

# Fault scenarios against the real stack, ~10 min (README "Reliability"); not in `make test`.
chaos: proto
	$(PY) -m bench.chaos

# The installable wheel (README, "Installing"): setup.py generates wxlogin/ into it.
dist: $(STAMP)
	$(PY) -m pip wheel --quiet --no-deps --no-build-isolation -w dist .
	@ls dist/*.whl

# The production rehearsal (README "End to end: the rehearsed set-up"), ~3 min; needs haproxy and nghttp
# (`tools`). Its smoke runs in `make test`.
rehearsal: proto tools
	$(PY) -m bench.rehearsal

clean:
	rm -rf $(VENV) wxlogin .mypy_cache .ruff_cache .pytest_cache node_modules clients/node/node_modules dist build
