# Entry points for developers and CI. Everything runs through uv, installed on demand.

SHELL := /bin/bash
.DEFAULT_GOAL := help

# Where `pip install [--user] uv` puts uv; often not on PATH yet. Appended, not prepended,
# so a uv already on PATH wins and nothing else gets shadowed.
PIP_SCRIPT_DIRS := $(shell python3 -c 'import site, sysconfig; \
	print(site.USER_BASE + "/bin:" + sysconfig.get_path("scripts"))' 2>/dev/null)
# uv trusts the machine's certificate store (a TLS-inspecting proxy adds its CA there).
export UV_SYSTEM_CERTS ?= 1
# Installed packages come with their bytecode. Where PYTHONDONTWRITEBYTECODE is set (as on
# CI), nothing else writes it, and each process compiles its imports from source: 6 s of
# CPU to start a service instead of 2 s, for every service a test or `make run` starts.
export UV_COMPILE_BYTECODE ?= 1
export PATH := $(PATH):$(HOME)/.local/bin:$(PIP_SCRIPT_DIRS)

SERVICES := contacts lifecycle scoring notifications
RUN_TARGETS := $(addprefix run-,$(SERVICES))

# The same variables the dev runner reads (see `uv run crm-dev --help`).
CRM_DATA_DIR ?= var
DATA_DIR := $(abspath $(CRM_DATA_DIR))
# Not named CRM_KAFKA_BOOTSTRAP: exporting that would make `make run` skip its own broker.
SINGLE_SERVICE_BOOTSTRAP := $(or $(CRM_KAFKA_BOOTSTRAP),127.0.0.1:9092)
CRM_TEST_POSTGRES_URL ?= postgresql://postgres@127.0.0.1:5432/postgres
# Extra arguments for crm-dev, e.g. `make run ARGS="--services lifecycle"`.
ARGS ?=
# Extra arguments for the CDNOW replay of `make bench`, e.g. REPLAY_ARGS="--profile replay".
REPLAY_ARGS ?=

.PHONY: help install run $(RUN_TARGETS) test test-postgres test-faults test-fuzz lint migrate bench bench-lifecycle bench-scoring bench-reads bench-memory bench-inprocess bench-floor clean

help:
	@echo "make install            install uv if needed, then the locked dependencies"
	@echo "make run                broker + all services (crm-dev; ARGS=\"--services ...\")"
	@echo "make run-<service>      one service alone ($(SERVICES)) against"
	@echo "                        CRM_KAFKA_BOOTSTRAP (default 127.0.0.1:9092)"
	@echo "make test               the whole test suite (SQLite, embedded broker)"
	@echo "make test-postgres      storage tests on PostgreSQL (CRM_TEST_POSTGRES_URL)"
	@echo "make test-faults        SIGKILL each service and SIGSTOP the broker mid-stream"
	@echo "make test-fuzz          schemathesis against every service's OpenAPI (about 2 minutes)"
	@echo "make lint               ruff check, format check and mypy --strict"
	@echo "make migrate            apply every service's migrations to its database"
	@echo "make bench              raw Kafka baseline, throughput (100,000 purchases via HTTP and"
	@echo "                        crm.inbound until lifecycle and scoring folded them), latency"
	@echo "                        at 500 POSTs/s, then the CDNOW master through the whole system"
	@echo "                        (event time); fresh broker each; JSON in bench/results/"
	@echo "                        (ARGS=\"...\" for bench.throughput, REPLAY_ARGS=\"...\" for the"
	@echo "                        replay; see bench/README.md)"
	@echo "make bench-lifecycle    lifecycle alone folding the full CDNOW master (event time),"
	@echo "                        stage summary, rebuild; JSON in bench/results/"
	@echo "                        (ARGS=\"--profile replay,rebuild\", see bench/README.md)"
	@echo "make bench-scoring      scoring alone folding the CDNOW master, refit through its API,"
	@echo "                        worklist, crm.scores; JSON in bench/results/"
	@echo "                        (ARGS=\"--services lifecycle,scoring --profile replay,refit\")"
	@echo "make bench-reads        GET of a contact, a stage, a score at 64 connections against a"
	@echo "                        minimal FastAPI app in the same run; JSON in bench/results/"
	@echo "                        (ARGS=\"--profile lifecycle\", see bench/README.md)"
	@echo "make bench-memory       RSS of every service at 10k and 100k customers, bytes per"
	@echo "                        customer; JSON in bench/results/ (ARGS=\"--customers 1000000\")"
	@echo "make bench-inprocess    the CDNOW master through the four services in one process, no"
	@echo "                        broker: CPU per consumer, for comparing versions of the code"
	@echo "                        (ARGS=\"--batch 5 --statements\", see bench/README.md)"
	@echo "make bench-floor        the same against the consumers with their own work taken out:"
	@echo "                        what the architecture contract alone costs; JSON in bench/results/"
	@echo "make clean              remove var/ (databases and logs)"

install:
	@command -v uv >/dev/null 2>&1 || python3 -m pip install --user uv || pip install uv
	@command -v uv >/dev/null 2>&1 || { echo "uv was installed but is not on PATH" >&2; exit 1; }
	@if [ -f uv.lock ]; then uv sync --frozen; else uv sync; fi
	@# Our own packages are installed editable, so uv leaves their bytecode to us.
	@uv run --frozen --no-sync python -m compileall -q services shared bench >/dev/null

run: install
	uv run crm-dev $(ARGS)

# One service in the foreground; its database defaults to the file `make run` uses.
$(RUN_TARGETS): run-%: install
	@mkdir -p "$(DATA_DIR)"
	CRM_KAFKA_BOOTSTRAP="$(SINGLE_SERVICE_BOOTSTRAP)" \
	CRM_DATA_DIR="$(DATA_DIR)" \
	CRM_DATABASE_URL="$${CRM_DATABASE_URL:-sqlite:///$(DATA_DIR)/$*.db}" \
	uv run crm-$* serve

# Most tests wait on the broker (a consumer group's first assignment takes a few seconds),
# so four workers on two cores finish in ~60% of the time one takes; each worker starts its
# own broker. TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 4

test: install
	uv run pytest -q -n $(TEST_WORKERS)

test-postgres: install
	CRM_TEST_DATABASES=postgres CRM_TEST_POSTGRES_URL="$(CRM_TEST_POSTGRES_URL)" \
	uv run pytest -q -m storage -n $(TEST_WORKERS)

# Kills each service and freezes the broker while 100,000 events stream in (a few minutes).
test-faults: install
	uv run pytest -q -m faults --timeout 900 tests/faults

# Generated requests against every operation of every service, in-process, on both cores.
test-fuzz: install
	uv run pytest -q -m fuzz tests/fuzz -n 2

lint: install
	uv run ruff check . && uv run ruff format --check . && uv run mypy

# Each service's database: CRM_<SERVICE>_DATABASE_URL, else its SQLite file.
migrate: install
	@mkdir -p "$(DATA_DIR)"
	@set -e; for svc in $(SERVICES); do \
	  override="CRM_$${svc^^}_DATABASE_URL"; \
	  url="$${!override:-sqlite:///$(DATA_DIR)/$$svc.db}"; \
	  echo "migrating $$svc"; \
	  CRM_DATA_DIR="$(DATA_DIR)" CRM_DATABASE_URL="$$url" uv run crm-$$svc migrate; \
	done

# The issue's items 1-3 (bench.throughput), then 4 (the CDNOW replay through contacts).
bench: install
	uv run python -m bench.throughput $(ARGS)
	uv run python -m bench.lifecycle_replay --through contacts --no-rebuild --drain-timeout 300 \
	  $(REPLAY_ARGS)

bench-lifecycle: install
	uv run python -m bench.lifecycle_replay $(ARGS)

bench-scoring: install
	uv run python -m bench.lifecycle_replay --services scoring $(ARGS)

bench-reads: install
	uv run python -m bench.http_reads $(ARGS)

bench-memory: install
	uv run python -m bench.memory_scale $(ARGS)

bench-inprocess: install
	uv run python -m bench.inprocess $(ARGS)

bench-floor: install
	uv run python -m bench.floor $(ARGS)

clean:
	rm -rf var/
