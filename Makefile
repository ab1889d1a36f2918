# The Makefile is the contract: CI (.ci/run) calls these same targets.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

# A persistent target directory outside the clone, so a fresh clone reuses built RocksDB/librdkafka.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/open-autoglm/target
STACK := deploy/local/stack.sh
# The local stack's addresses, as AUTOGLM_KAFKA_BOOTSTRAP=… AUTOGLM_SCHEMA_REGISTRY_URL=…
STACK_ENV = $$($(STACK) env)
# The demo config (open-autoglm-config.yaml) pointed at the local stack's actual ports.
DEMO_ENV = AUTOGLM__KAFKA__BOOTSTRAP_SERVERS=$$($(STACK) env | sed -n 's/^AUTOGLM_KAFKA_BOOTSTRAP=//p') \
	AUTOGLM__SCHEMA_REGISTRY__URL=$$($(STACK) env | sed -n 's/^AUTOGLM_SCHEMA_REGISTRY_URL=//p')
# `make demo SECURITY=on`: the sync runs over SASL_SSL/OAUTHBEARER, with client-credentials tokens
# from the stack's Keycloak and the demo's ACLs (docs/security.md).
SECURITY ?= off
stack_var = $$($(STACK) env | sed -n 's/^$(1)=//p')
ifeq ($(SECURITY),on)
DEMO_ENV += AUTOGLM__KAFKA__BOOTSTRAP_SERVERS=$(call stack_var,AUTOGLM_KAFKA_OAUTH) \
	AUTOGLM__KAFKA__SECURITY__TLS__CA=$(call stack_var,AUTOGLM_TLS_CA) \
	AUTOGLM__KAFKA__SECURITY__OAUTH__CLIENT_ID=autoglm-sync \
	AUTOGLM__KAFKA__SECURITY__OAUTH__CLIENT_SECRET=autoglm-sync-secret \
	AUTOGLM__KAFKA__SECURITY__OAUTH__TOKEN_ENDPOINT=$(call stack_var,AUTOGLM_OIDC_TOKEN_ENDPOINT) \
	AUTOGLM__KAFKA__SECURITY__OAUTH__SCOPE=kafka
else ifneq ($(SECURITY),off)
$(error SECURITY is on or off, not $(SECURITY))
endif
BIN = $(CARGO_TARGET_DIR)/debug
# One selection for every cargo command: all packages and targets, plus the test-only crash
# points (inert unless AUTOGLM_CRASH_AT is set), so features unify the same way and
# RocksDB/librdkafka are built once per target directory.
CARGO_SELECT = --workspace --all-targets --features autoglm/failpoints

.PHONY: help deps tools up down status reset demo test chaos soak bench microbench fuzz fmt lint build

help: ## Show the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-8s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

deps: ## Install what a fresh Debian machine lacks (build packages, Maven, PostgreSQL, openssl, rustfmt, clippy)
	@bash deploy/local/deps.sh

tools: ## Build the Go tools the tests run (helm, promtool, jaeger) from the Go module proxy, once per machine
	@bash deploy/local/tools.sh >/dev/null

up: ## Start the local stack: Keycloak, Kafka (plaintext and secured listeners), two Schema Registries, PostgreSQL, Kafka Connect with Debezium (idempotent)
	@$(STACK) up

down: ## Stop the local stack (data is kept; see `make reset`)
	@$(STACK) down

status: ## Show whether each service of the local stack is ready, and where; Connect's connectors
	@$(STACK) status

reset: ## Stop the local stack and delete its data and logs
	@$(STACK) reset

demo: deps up ## Run the CRM → ERP sync: PostgreSQL → Debezium → Kafka → autoglm → ERP topic, compared with the table (SECURITY=on: over OAUTHBEARER)
	cargo build $(CARGO_SELECT)
	@rm -rf .stack/demo
	@env $(STACK_ENV) $(BIN)/autoglm-demo cdc-setup
	@env $(STACK_ENV) $(DEMO_ENV) $(BIN)/autoglm schemas register
	@env $(STACK_ENV) $(BIN)/autoglm-demo cdc-changes
	@env $(STACK_ENV) $(DEMO_ENV) $(BIN)/autoglm run --exit-when-idle-secs 4
	@env $(STACK_ENV) $(BIN)/autoglm-demo compare

build: ## Build every crate, test and benchmark
	cargo build $(CARGO_SELECT)

fmt: ## Format the code
	cargo fmt --all

lint: ## rustfmt and clippy, as CI runs them
	cargo fmt --all -- --check
	cargo clippy $(CARGO_SELECT) -- -D warnings

test: deps tools up lint ## Start the stack if needed, lint, then run every test (unit and integration)
	env $(STACK_ENV) cargo test $(CARGO_SELECT) --no-fail-fast

# The chaos test's sizes (make test runs the defaults, the short version).
RECORDS ?= 100000
KEYS ?= 2000
PARTITIONS ?= 6
KILLS ?= 10
SEED ?= 1

chaos: up ## The chaos test alone, with its figures: make chaos RECORDS=1000000 KEYS=1000000 KILLS=30
	@exe=$$(cargo test $(CARGO_SELECT) --no-run 2>&1 | sed -n 's/.*Executable tests\/chaos.rs (\(.*\))/\1/p'); \
	  test -n "$$exe" || { echo "chaos: test binary not found" >&2; exit 1; }; \
	  env $(STACK_ENV) CHAOS_RECORDS=$(RECORDS) CHAOS_KEYS=$(KEYS) \
	  CHAOS_PARTITIONS=$(PARTITIONS) CHAOS_KILLS=$(KILLS) CHAOS_SEED=$(SEED) \
	  "$$exe" chaos_copies --nocapture

# The test `make soak` repeats, and how many times.
TEST ?=
N ?= 30

soak: up ## One test N times, counting passes and failures: make soak TEST=stopped_after_commit N=30
	@test -n "$(TEST)" || { echo "soak: name a test: make soak TEST=<name> N=30" >&2; exit 2; }
	@env $(STACK_ENV) bash tests/soak.sh $(TEST) $(N)

# The benchmark's sizes (the defaults took 4 minutes on 2 cores); see `autoglm-bench --help`.
BENCH_RECORDS ?= 200000
BENCH_KEYS ?= 20000
BENCH_PARTITIONS ?= 6
BENCH_KEY_SCALES ?= 10000,1000000
BENCH_INSTANCES ?= 1,2,3
BENCH_RESTORE_KEYS ?= 1000000
BENCH_LATENCY_SECS ?= 15
BENCH_PHASES ?= ceiling,modes,json,latency,keys,instances,restore
BENCH_OUT ?= bench/results
BENCH_ARGS ?=

bench: up ## Throughput vs the broker, Avro and JSON input, latency, key/instance scaling, restore; JSON + PNG in bench/results: make bench BENCH_KEY_SCALES=10000,1000000,10000000
	cargo build --release --bin autoglm --bin autoglm-bench
	env $(STACK_ENV) $(CARGO_TARGET_DIR)/release/autoglm-bench --records $(BENCH_RECORDS) \
	  --keys $(BENCH_KEYS) --partitions $(BENCH_PARTITIONS) --key-scales $(BENCH_KEY_SCALES) \
	  --instances $(BENCH_INSTANCES) --restore-keys $(BENCH_RESTORE_KEYS) \
	  --latency-secs $(BENCH_LATENCY_SECS) --phases $(BENCH_PHASES) --out $(BENCH_OUT) $(BENCH_ARGS)

# The fuzz target `make fuzz` runs, for how long, and where its findings go (the queue, crashes).
TARGET ?=
SECS ?= 1800
FUZZ_OUT ?= $(HOME)/.cache/open-autoglm/fuzz
# A target directory of its own: cargo-afl instruments every crate, so nothing is shared with the
# normal build.
FUZZ_TARGET_DIR ?= $(HOME)/.cache/open-autoglm/afl-target

fuzz: ## Fuzz one target with AFL++ (cargo-afl, installed on first use): make fuzz TARGET=avro SECS=1800 (targets: crates/autoglm-fuzz)
	@test -n "$(TARGET)" || { echo "fuzz: name a target: make fuzz TARGET=<$$(ls crates/autoglm-fuzz/corpus | paste -sd'|')> SECS=1800" >&2; exit 2; }
	@test -d crates/autoglm-fuzz/corpus/$(TARGET) || { echo "fuzz: no target $(TARGET) (crates/autoglm-fuzz/corpus)" >&2; exit 2; }
	@command -v cargo-afl >/dev/null || cargo install cargo-afl --locked
	@cargo afl config --build >/dev/null 2>&1 || true
	CARGO_TARGET_DIR=$(FUZZ_TARGET_DIR) cargo afl build --release -p autoglm-fuzz --features afl --bin fuzz
	@mkdir -p $(FUZZ_OUT)
	AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 \
	  cargo afl fuzz -V $(SECS) -m none -i crates/autoglm-fuzz/corpus/$(TARGET) \
	  -o $(FUZZ_OUT)/$(TARGET) -- $(FUZZ_TARGET_DIR)/release/fuzz $(TARGET)
	@echo "fuzz: findings in $(FUZZ_OUT)/$(TARGET)/default (crashes/, queue/); copy a fixed crash into crates/autoglm-fuzz/corpus/$(TARGET)/ so that make test replays it"

microbench: ## criterion, per record on the bench's records: decode (3 ways, then to the event; JSON with and without the wrapper), version guard, mapping, encode
	cargo bench -p autoglm-codec -p autoglm-state -p autoglm-mapping --bench codec --bench guard --bench mapping
