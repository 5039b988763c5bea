# nftpol — build, test and demo. `make test` is what CI runs (see .ci/run);
# it needs root for the integration tests, which run the built binary
# against the real kernel inside throwaway network namespaces.

GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# --version prints these; -dirty marks a build from a modified tree.
COMMIT     ?= $(shell git describe --always --dirty --abbrev=40 --exclude='*' 2>/dev/null)
BUILD_DATE ?= $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
LDFLAGS := -X main.version=$(VERSION) -X main.commit=$(COMMIT) -X main.date=$(BUILD_DATE)
# No cgo: every nftpol process (each forwarded apply among them) starts
# without the dynamic loader and libc's threads: `nftpol --version` 0.7 ms
# less warm, and up to 11 ms less from cold while these machines are slow
# after idling (DESIGN.md). User names still resolve through NSS: those
# /etc/passwd does not hold are asked of getent(1) (internal/getent).
export CGO_ENABLED := 0

.PHONY: all build deps test unit lint demo install clean man completion deb stress

# make install: PREFIX and DESTDIR as usual. The example config goes to
# SYSCONFDIR/nftpol only where no config exists: it never overwrites an
# operator's policy.
PREFIX     ?= /usr/local
DESTDIR    ?=
SBINDIR    ?= $(PREFIX)/sbin
UNITDIR    ?= $(PREFIX)/lib/systemd/system
DOCDIR     ?= $(PREFIX)/share/doc/nftpol
SYSCONFDIR ?= /etc

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/nftpol ./cmd/nftpol

# The integration tests and the demo need nft (a second opinion on what
# nftpol wrote) and ip (namespaces, veth); the Ansible role's test needs
# ansible-playbook, the agent's metrics test promtool (Debian's prometheus).
# Installed only where missing.
deps:
	@missing=""; \
	command -v nft >/dev/null || missing="$$missing nftables"; \
	command -v ip >/dev/null || missing="$$missing iproute2"; \
	command -v ansible-playbook >/dev/null || missing="$$missing ansible"; \
	command -v bpftool >/dev/null || missing="$$missing bpftool"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing"; \
		apt-get update && apt-get install -y $$missing; \
	fi

lint:
	@out=$$(gofmt -l $$($(GO) list -f '{{.Dir}}' ./...)); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) tool staticcheck ./...

# Unit tests only: no root, no kernel.
unit:
	$(GO) test -count=1 $$($(GO) list ./... | grep -v /integration)

test: deps lint
	$(GO) test -count=1 -timeout 30m ./...
	$(GO) test -count=1 -tags mangen -run TestManPages ./cmd/nftpol

demo: deps
	./scripts/demo.sh

# The stress test alone, long (root): clients hammer always-allowed and
# always-forbidden ports of accounts in every shard while nftpol flips the
# table on every path (elements, moves, rebuilds, layout change, --adopt,
# restore, first install) until each path made STRESS_CONNECTIONS
# connections. `make test` runs the same test bounded.
STRESS_CONNECTIONS ?= 200000
stress: deps
	NFTPOL_STRESS=long $(GO) test -count=1 -timeout 3h -run '^TestStress$$' -v ./integration \
		-args -stress.connections=$(STRESS_CONNECTIONS)

# Fuzzing: runs each fuzz target for FUZZTIME (go test -fuzz takes one target
# at a time): the policy loader, the fast YAML decoding against yaml.v3, and
# compile -> export -> nft -c -f. Their seed corpora (testdata/fuzz/) also
# run as plain tests in `make test`. New failing inputs are written to
# testdata/fuzz/ for review.
FUZZTIME    ?= 30s
FUZZTIMEOUT ?= 1h
FUZZ_TARGETS = policies:FuzzLoad policies/internal/document:FuzzPlainYAML compiler:FuzzCompileExport

.PHONY: fuzz
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t#*:}; \
		echo "== $$name in ./$$pkg for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) -timeout $(FUZZTIMEOUT) ./$$pkg; \
	done

# Benchmarks against nft on the real kernel; needs root (nft, ip). In
# network namespaces it creates and deletes: N = 1,000, 10,000 and 50,000
# accounts, 5 runs each, nftpol and nft side by side, plus per-packet cost.
# The table goes to stdout and BENCHMARKS.md (machine and date included).
# BENCH_QUICK=1: N = 1,000 and 10,000, 3 runs, into bin/BENCHMARKS-quick.md.
# BENCH_FLAGS adds flags (nftpol-bench -h). The Go benchmarks (no root:
# load, compile, diff, encode) run first and go into the report too.
BENCH_OUT ?= $(if $(BENCH_QUICK),bin/BENCHMARKS-quick.md,BENCHMARKS.md)
.PHONY: bench
bench: build
	$(GO) build -o bin/nftpol-bench ./bench/cmd/nftpol-bench
	$(GO) test -run '^$$' -bench . -benchmem $(if $(BENCH_QUICK),-benchtime 3x) ./... >bin/gobench.txt 2>&1; \
		status=$$?; cat bin/gobench.txt; [ $$status = 0 ] || echo "go test -bench failed (exit $$status); the report says so"
	./bin/nftpol-bench -nftpol bin/nftpol -gobench bin/gobench.txt -out $(BENCH_OUT) $(if $(BENCH_QUICK),-quick) $(BENCH_FLAGS)

install: build
	install -D -m 0755 bin/nftpol $(DESTDIR)$(SBINDIR)/nftpol
	for u in packaging/systemd/*; do \
		sed -e 's|@SBINDIR@|$(SBINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' $$u > $$u.tmp && \
		install -D -m 0644 $$u.tmp $(DESTDIR)$(UNITDIR)/$$(basename $$u) && rm -f $$u.tmp || exit 1; \
	done
	install -d -m 0755 $(DESTDIR)$(SYSCONFDIR)/nftpol/policies.d
	[ -e $(DESTDIR)$(SYSCONFDIR)/nftpol/nftpol.yaml ] || \
		install -m 0644 packaging/nftpol.yaml $(DESTDIR)$(SYSCONFDIR)/nftpol/nftpol.yaml
	install -d -m 0755 $(DESTDIR)$(DOCDIR)/examples/policies.d
	install -m 0644 examples/nftpol.yaml $(DESTDIR)$(DOCDIR)/examples/
	install -m 0644 examples/policies.d/* $(DESTDIR)$(DOCDIR)/examples/policies.d/

# Man pages and bash/zsh completion, generated from the commands by the
# built binary, into bin/man and bin/completion. The pages are dated with
# the last commit (SOURCE_DATE_EPOCH), so the same source gives the same
# pages.
# The man command is only in a binary built with the tag mangen
# (cmd/nftpol/docs.go says why), bin/nftpol-man.
man: build
	rm -rf bin/man
	$(GO) build -tags mangen -ldflags "$(LDFLAGS)" -o bin/nftpol-man ./cmd/nftpol
	SOURCE_DATE_EPOCH=$${SOURCE_DATE_EPOCH:-$$(git log -1 --format=%ct 2>/dev/null || date +%s)} bin/nftpol-man man bin/man

completion: build
	mkdir -p bin/completion
	bin/nftpol completion bash >bin/completion/nftpol
	bin/nftpol completion zsh >bin/completion/_nftpol

# The Debian package (into DEBDIR), built with nfpm, which go.mod pins as a
# tool: the binary, the systemd units, /etc/nftpol (conffiles), the man
# pages and the completion. See packaging/deb.sh.
DEBDIR ?= bin
deb: build man completion
	GO=$(GO) VERSION=$(VERSION) DEBDIR=$(DEBDIR) ./packaging/deb.sh

clean:
	rm -rf bin
