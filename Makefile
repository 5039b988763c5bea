# nftpol — build, test and demo. `make test` is what CI runs (see .ci/run);
# it needs root for the integration tests, which run the built binary
# against the real kernel inside throwaway network namespaces.

GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: all build deps test unit lint demo clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/nftpol ./cmd/nftpol

# The integration tests and the demo need nft (a second opinion on what
# nftpol wrote) and ip (namespaces, veth). Installed only where missing.
deps:
	@missing=""; \
	command -v nft >/dev/null || missing="$$missing nftables"; \
	command -v ip >/dev/null || missing="$$missing iproute2"; \
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

demo: deps
	./scripts/demo.sh

clean:
	rm -rf bin
