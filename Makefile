# nftpol — build, test and demo. `make test` is what CI runs (see .ci/run);
# it needs root for the integration tests, which run the built binary
# against the real kernel inside throwaway network namespaces.

GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: all build test unit lint demo clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/nftpol ./cmd/nftpol

lint:
	@out=$$(gofmt -l $$($(GO) list -f '{{.Dir}}' ./...)); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) tool staticcheck ./...

# Unit tests only: no root, no kernel.
unit:
	$(GO) test -count=1 $$($(GO) list ./... | grep -v /integration)

test: lint
	$(GO) test -count=1 -timeout 30m ./...

demo:
	./scripts/demo.sh

clean:
	rm -rf bin
