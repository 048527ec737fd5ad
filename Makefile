# drfs build and test entry points; CI runs `make ci`.
GO        ?= go
PKGS      ?= ./...
TESTFLAGS ?= -count=1 -timeout 60m

.PHONY: build test race lint bench e2e demo ci deps

build:
	$(GO) build -buildvcs=auto -o bin/drfs ./cmd/drfs

# Tests need root and /dev/fuse for the real mounts; without them those tests skip.
test:
	$(GO) test $(TESTFLAGS) $(PKGS)

race:
	$(GO) test -race $(TESTFLAGS) $(PKGS)

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting"; exit 1; }
	$(GO) vet $(PKGS)
	@if command -v staticcheck >/dev/null; then staticcheck $(PKGS); else echo "staticcheck not installed: skipped (make deps installs it)"; fi

bench: build
	./bin/drfs bench mount

# End-to-end tests of the built binary (part of `make test` too).
e2e:
	$(GO) test $(TESTFLAGS) ./cmd/drfs/

demo: deps build
	./scripts/demo.sh

# Everything the tests need on a fresh Debian machine.
deps:
	./scripts/deps.sh

# The README's test command: dependencies, lint, and every test with -race,
# with Azurite running for the Azure Blob target's tests.
ci: deps lint
	./scripts/azurite.sh start
	$(MAKE) race; rc=$$?; ./scripts/azurite.sh stop; exit $$rc
