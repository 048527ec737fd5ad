# drfs build and test entry points; CI runs `make ci`.
GO        ?= go
PKGS      ?= ./...
TESTFLAGS ?= -count=1 -timeout 60m

PREFIX    ?= /usr/local
DESTDIR   ?=

.PHONY: build test race lint bench e2e e2e-libvirt demo ci deps install

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

# The libvirt drill alone (docs/libvirt.md): a VM under libvirt on the
# agent's mount, failed over and checked (part of `make test` too).
e2e-libvirt:
	$(GO) test $(TESTFLAGS) -run TestLibvirtDrill -v ./cmd/drfs/

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

# Installs drfs, its systemd unit, an example configuration (never over an
# existing one) and the docs where the unit's Documentation= points.
install: build
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)/etc/systemd/system $(DESTDIR)/etc/drfs $(DESTDIR)/usr/share/doc/drfs
	install -m 755 bin/drfs $(DESTDIR)$(PREFIX)/bin/drfs
	sed 's|/usr/local/bin/drfs|$(PREFIX)/bin/drfs|' contrib/drfs-agent.service > $(DESTDIR)/etc/systemd/system/drfs-agent.service
	chmod 644 $(DESTDIR)/etc/systemd/system/drfs-agent.service
	test -e $(DESTDIR)/etc/drfs/agent.yaml || install -m 600 docs/agent.yaml.example $(DESTDIR)/etc/drfs/agent.yaml
	! test -e $(DESTDIR)/etc/drfs/agent.conf || echo "make install: /etc/drfs/agent.conf is not read any more: write its settings in YAML in /etc/drfs/agent.yaml (docs/agent.md)" >&2
	install -m 644 README.md docs/*.md docs/agent.yaml.example $(DESTDIR)/usr/share/doc/drfs/
