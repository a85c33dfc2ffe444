# Thin wrappers over the go command. `make test` is what CI runs.
GO      ?= go
PKGS    ?= ./...
FUZZTIME ?= 10s

.PHONY: build test testrace test-short bench replbench demo fuzz lint vet fmt tidy check-tidy ci

build:
	$(GO) build $(PKGS)

# The default suite: everything under the race detector.
test:
	$(GO) test -race -timeout 20m $(PKGS)

testrace: test

test-short:
	$(GO) test -short $(PKGS)

# Micro-benchmarks (go test -bench) and the replbench table.
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./replica/ ./transport/
	$(GO) test -run '^$$' -bench . -benchtime 10x ./broker/
	$(GO) run ./cmd/replbench

replbench:
	$(GO) run ./cmd/replbench

demo:
	$(GO) run ./examples/marketplace

# Runs every fuzz target briefly (FUZZTIME each).
fuzz:
	@set -e; for pkg in ./transport ./broker; do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
			echo "fuzz $$pkg $$f"; \
			$(GO) test $$pkg -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME); \
		done; \
	done

lint: vet
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

fmt:
	gofmt -w .

tidy:
	$(GO) mod tidy

# Fails when go.mod/go.sum are not tidy.
check-tidy:
	@d=$$(mktemp -d); cp go.mod go.sum $$d/; $(GO) mod tidy; \
	if ! cmp -s go.mod $$d/go.mod || ! cmp -s go.sum $$d/go.sum; then \
		cp $$d/go.mod $$d/go.sum .; rm -rf $$d; echo "go.mod/go.sum not tidy: run make tidy"; exit 1; fi; \
	rm -rf $$d

ci: lint check-tidy test demo

# The marketplace as separate processes on localhost: a broker, a stores
# primary and standby, two products instances, a scripted scenario (curl).
.PHONY: marketplace
marketplace:
	./examples/marketplace/run.sh

# The chaos suite (chaos/): real processes (brokers, owner instances,
# consumers), faults, and every guarantee of DESIGN.md checked; the report
# goes to CHAOS_REPORT and is printed at the end.
#   chaos        the full suite (several minutes, bounded), with the
#                real-network level (network namespaces, nftables) when
#                run as root; nftables is installed with apt-get if missing.
#   chaos-short  a seeded subset of about two minutes (CI runs it).
# REPLMESH_CHAOS_SEED=<n> replays a run's seeds; REPLMESH_CHAOS_ONLY=<name>
# runs only the scenarios whose name contains it.
CHAOS_REPORT ?= $(or $(TMPDIR),/tmp)/replmesh-chaos-report.txt

.PHONY: chaos chaos-short
chaos:
	@if [ "$$(id -u)" = 0 ] && command -v ip >/dev/null 2>&1 && ! command -v nft >/dev/null 2>&1; then \
		echo "installing nftables for the real-network level"; \
		apt-get install -y nftables >/dev/null 2>&1 || { apt-get update >/dev/null 2>&1 && apt-get install -y nftables >/dev/null 2>&1; } || \
			echo "nftables could not be installed: the real-network level will be skipped"; \
	fi
	@rm -f $(CHAOS_REPORT)
	REPLMESH_CHAOS=full REPLMESH_CHAOS_NETNS=1 REPLMESH_CHAOS_REPORT=$(CHAOS_REPORT) \
		$(GO) test -count=1 -timeout 30m -run '^TestChaos$$' ./chaos/; \
		status=$$?; cat $(CHAOS_REPORT) 2>/dev/null; exit $$status

chaos-short:
	@rm -f $(CHAOS_REPORT)
	REPLMESH_CHAOS=short REPLMESH_CHAOS_REPORT=$(CHAOS_REPORT) \
		$(GO) test -count=1 -timeout 15m -run '^TestChaos$$' ./chaos/; \
		status=$$?; cat $(CHAOS_REPORT) 2>/dev/null; exit $$status
