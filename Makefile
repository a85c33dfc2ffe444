# Thin wrappers over the go command. `make help` lists the targets;
# `make test` is what the README and CI run.
GO       ?= go
PKGS     ?= ./...
BIN      ?= bin
FUZZTIME ?= 10s

# The binaries `make build` puts into $(BIN)/.
CMDS := ./cmd/replbroker ./cmd/replctl ./cmd/replbench \
	./examples/marketplace/cmd/stores ./examples/marketplace/cmd/products

.DEFAULT_GOAL := build

.PHONY: help build install test testrace test-short stress cross bench replbench demo \
	fuzz lint vet staticcheck fmt tidy check-tidy ci

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## compile everything; put replbroker, replctl, replbench, stores and products into bin/
	$(GO) build $(PKGS)
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ $(CMDS)
	@echo "built: $$(cd $(BIN) && ls | tr '\n' ' ')(in $(BIN)/)"

install: ## go install replbroker and replctl into GOPATH/bin (go env GOPATH)
	$(GO) install ./cmd/replbroker ./cmd/replctl

# The race detector needs cgo, and cgo a C compiler: `go env CGO_ENABLED`
# says 0 when none is found. Without one the suite runs without -race and
# says so; REPLMESH_REQUIRE_RACE=1 (CI) makes that an error instead.
RACE = $(shell [ "$$($(GO) env CGO_ENABLED 2>/dev/null)" = 1 ] && echo -race)

test: ## the test suite, under the race detector where cgo works
	@if [ -z "$(RACE)" ]; then \
		if [ "$$REPLMESH_REQUIRE_RACE" = 1 ]; then \
			echo "make test: the race detector needs cgo and no C compiler was found (install gcc)"; exit 1; fi; \
		echo "make test: no C compiler found (go env CGO_ENABLED is 0), so the race detector cannot run:"; \
		echo "           running the suite WITHOUT -race (install gcc to get it)"; \
	fi
	$(GO) test $(RACE) -timeout 20m $(PKGS)

testrace: test

test-short: ## the suite without the slow tests and without -race
	$(GO) test -short $(PKGS)

# The suite STRESS_COUNT times (-count) while a busy loop per core keeps the
# machine loaded, as a shared CI machine is; the load stops by itself.
STRESS_COUNT ?= 3
stress: ## the suite with -count=3 under a CPU hog on every core (finds timing-bound tests)
	GO="$(GO)" RACE="$(RACE)" STRESS_COUNT=$(STRESS_COUNT) PKGS="$(PKGS)" ./.ci/stress

bench: ## micro-benchmarks, the marketplace authorization benchmark and the replbench table
	$(GO) test -run '^$$' -bench . -benchmem ./replica/ ./transport/
	$(GO) test -run '^$$' -bench . -benchtime 10x ./broker/
	$(GO) test -run '^$$' -bench Authz ./examples/marketplace/
	$(GO) run ./cmd/replbench

# The peer comparison (bench/peers, a module of its own so the library's
# go.mod stays free of NATS and Redis): replmesh, NATS JetStream KV
# (embedded) and Redis replicas (child processes) on the same workloads in
# one run. redis-server is installed when missing (.ci/install-redis);
# without it the table says Redis was skipped.
.PHONY: peers peers-quick
peers: ## the peer comparison: replmesh beside NATS JetStream KV and Redis replicas, medians of 3 (about 15 minutes)
	@command -v redis-server >/dev/null 2>&1 || ./.ci/install-redis || true
	cd bench/peers && $(GO) run . -count 3 -json peers.json

peers-quick: ## the peer comparison at smoke sizes (under a minute)
	@command -v redis-server >/dev/null 2>&1 || ./.ci/install-redis || true
	cd bench/peers && $(GO) run . -quick -count 1

replbench: ## the replbench table (fan-out, transfer, resume, reads, modes, security: mTLS cost and hostile peers)
	$(GO) run ./cmd/replbench

demo: ## the marketplace demo in one process, on embedded defaults
	$(GO) run ./examples/marketplace

fuzz: ## every fuzz target for FUZZTIME (10s) each
	@set -e; for pkg in ./transport ./broker ./cmd/replctl; do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
			echo "fuzz $$pkg $$f"; \
			$(GO) test $$pkg -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME); \
		done; \
	done

lint: vet staticcheck cross ## go vet, gofmt and staticcheck (pinned in go.mod as a tool), also of bench/peers; the cross builds
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	cd bench/peers && $(GO) vet ./...

vet:
	$(GO) vet $(PKGS)

staticcheck:
	$(GO) tool staticcheck $(PKGS)

cross: ## compile for a 32-bit Linux and for macOS (syscall field sizes, build tags)
	GOOS=linux GOARCH=386 $(GO) build ./...
	GOOS=darwin GOARCH=arm64 $(GO) build ./...

fmt: ## gofmt -w
	gofmt -w .

tidy: ## go mod tidy
	$(GO) mod tidy

# Fails when go.mod/go.sum are not tidy.
check-tidy: ## fail when go.mod/go.sum are not tidy
	@d=$$(mktemp -d); cp go.mod go.sum $$d/; $(GO) mod tidy; \
	if ! cmp -s go.mod $$d/go.mod || ! cmp -s go.sum $$d/go.sum; then \
		cp $$d/go.mod $$d/go.sum .; rm -rf $$d; echo "go.mod/go.sum not tidy: run make tidy"; exit 1; fi; \
	rm -rf $$d
	@cd bench/peers && d=$$(mktemp -d) && cp go.mod go.sum $$d/ && $(GO) mod tidy && \
	if ! cmp -s go.mod $$d/go.mod || ! cmp -s go.sum $$d/go.sum; then \
		cp $$d/go.mod $$d/go.sum .; rm -rf $$d; echo "bench/peers: go.mod/go.sum not tidy: cd bench/peers && go mod tidy"; exit 1; fi; \
	rm -rf $$d

ci: ## what CI runs (.ci/run)
	./.ci/run

# The marketplace as separate processes on localhost: a broker, a stores
# primary and standby, two products instances, a scripted scenario (curl);
# everything is stopped at its end (make cluster-up leaves a cluster running).
.PHONY: marketplace
marketplace: ## the marketplace as processes on mTLS, a scripted scenario, then stopped (REPLMESH_INSECURE=1: plaintext)
	./examples/marketplace/run.sh

# A multi-node cluster on this machine, left running (docs/quickstart.md):
# 3 brokers, a stores primary and standby, 2 products instances, on
# 127.0.0.1 ports 27600-27643 (REPLMESH_CLUSTER_PORT_BASE moves them).
# CLUSTER_DIR (default $TMPDIR/replmesh-cluster) holds data, logs and pids.
CLUSTER_DIR ?=

.PHONY: cluster-up cluster-down cluster-status cluster-smoke
cluster-up: build ## start 3 brokers, stores primary+standby, 2 products on mTLS (certificates in CLUSTER_DIR/tls; REPLMESH_INSECURE=1: plaintext); leave them running
	./examples/marketplace/cluster.sh up $(CLUSTER_DIR)

cluster-down: ## stop exactly the processes cluster-up started (data and logs kept)
	./examples/marketplace/cluster.sh down $(CLUSTER_DIR)

cluster-status: ## which processes of the cluster are alive
	./examples/marketplace/cluster.sh status $(CLUSTER_DIR)

# CI: the cluster comes up (bounded), replctl reads it, the stores copies
# agree, everything stops and the directory is removed.
cluster-smoke: build ## cluster-up in a temporary directory, replctl status and verify, cluster-down
	@d=$$(mktemp -d "$${TMPDIR:-/tmp}/replmesh-cluster-smoke.XXXXXX"); \
	REPLMESH_CLUSTER_TIMEOUT=60 timeout 120 ./examples/marketplace/cluster.sh up "$$d" && \
		. "$$d/cluster.env" && timeout 30 $(BIN)/replctl status && timeout 30 $(BIN)/replctl verify stores/store_managers; \
	status=$$?; timeout 120 ./examples/marketplace/cluster.sh down -purge "$$d" || status=1; exit $$status

# The chaos suite (chaos/): real processes (brokers, owner instances,
# consumers), faults, and every guarantee of docs/design.md checked; the
# report goes to CHAOS_REPORT and is printed at the end.
#   chaos        the full suite (several minutes, bounded), with the
#                real-network level (network namespaces, nftables) when
#                run as root; nftables is installed with apt-get if missing.
#   chaos-short  a seeded subset of about two minutes (CI runs it).
# REPLMESH_CHAOS_SEED=<n> replays a run's seeds; REPLMESH_CHAOS_ONLY=<name>
# runs only the scenarios whose name contains it.
CHAOS_REPORT ?= $(or $(TMPDIR),/tmp)/replmesh-chaos-report.txt

.PHONY: chaos chaos-short
chaos: ## the full chaos suite (real processes on mTLS, faults incl. an attacker, every guarantee checked; REPLMESH_CHAOS_TLS=0: plaintext)
	@if [ "$$(id -u)" = 0 ] && command -v ip >/dev/null 2>&1 && ! command -v nft >/dev/null 2>&1; then \
		echo "installing nftables for the real-network level"; \
		apt-get install -y nftables >/dev/null 2>&1 || { apt-get update >/dev/null 2>&1 && apt-get install -y nftables >/dev/null 2>&1; } || \
			echo "nftables could not be installed: the real-network level will be skipped"; \
	fi
	@rm -f $(CHAOS_REPORT)
	REPLMESH_CHAOS=full REPLMESH_CHAOS_NETNS=1 REPLMESH_CHAOS_REPORT=$(CHAOS_REPORT) \
		$(GO) test -count=1 -timeout 30m -run '^TestChaos$$' ./chaos/; \
		status=$$?; cat $(CHAOS_REPORT) 2>/dev/null; exit $$status

chaos-short: ## a seeded two-minute subset of the chaos suite (CI runs it)
	@rm -f $(CHAOS_REPORT)
	REPLMESH_CHAOS=short REPLMESH_CHAOS_REPORT=$(CHAOS_REPORT) \
		$(GO) test -count=1 -timeout 15m -run '^TestChaos$$' ./chaos/; \
		status=$$?; cat $(CHAOS_REPORT) 2>/dev/null; exit $$status
