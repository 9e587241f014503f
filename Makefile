# Tributary — see README.md. `make run` and `make test` are the two commands
# a new user needs; everything else is for developers.

GO       ?= go
BIN      := bin/tributary
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT   ?= $(shell git rev-parse HEAD 2>/dev/null)
# The commit's date, not the clock's: the same commit builds the same binary.
DATE     ?= $(shell git log -1 --format=%cd --date=format-local:%Y-%m-%dT%H:%M:%SZ 2>/dev/null)
LDFLAGS  := -X main.version=$(VERSION) -X main.commit=$(COMMIT) -X main.date=$(DATE)
RELEASE_PLATFORMS ?= linux/amd64 linux/arm64
CONFIG   ?= examples/tributary.yaml
# Real peers for integration tests are built once per version into this cache
# (outside the repo); see tools/peers.sh and docs/testing.md.
export TRIBUTARY_PEERS_DIR ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/tributary-peers

.PHONY: all build release run test test-unit test-integration test-fuzz bench soak fuzz lint fmt peers clean proto dns-clients unit-tools chromium

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/tributary

## release: static binaries for RELEASE_PLATFORMS (linux/amd64, linux/arm64)
## with version, commit and date stamped in, and their SHA-256 checksums, in
## bin/release/ (tributary-VERSION-OS-ARCH, SHA256SUMS). deploy/Containerfile
## copies the binary of its platform from there.
release:
	rm -rf bin/release && mkdir -p bin/release
	set -e; for p in $(RELEASE_PLATFORMS); do \
		os=$${p%/*}; arch=$${p#*/}; \
		echo "building tributary $(VERSION) for $$os/$$arch"; \
		CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -ldflags '-s -w $(LDFLAGS)' \
			-o bin/release/tributary-$(VERSION)-$$os-$$arch ./cmd/tributary; \
	done
	cd bin/release && TZ=UTC sha256sum tributary-* > SHA256SUMS && cat SHA256SUMS

## run: start Tributary on the example config (file source with example services)
run: build
	./$(BIN) serve --config $(CONFIG)

## test: every test — unit tests with the race detector, then integration tests
## against the real tributary binary and real peers.
test: test-unit test-fuzz test-integration

test-unit:
	$(GO) vet ./...
	$(GO) test -race -count=1 ./...

# The binary under test is built with the race detector; the harness fails a
# test whose tributary process reports a data race.
test-integration: dns-clients unit-tools chromium
	$(GO) build -race -o bin/tributary-race ./cmd/tributary
	TRIBUTARY_BIN=$(CURDIR)/bin/tributary-race $(GO) test -race -count=1 -tags integration -timeout 30m ./integration/...

# dig and dnsmasq are the real clients of the DNS interface's tests
# (integration/dns); Debian packages, installed when either is missing.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
dns-clients:
	@command -v dig >/dev/null && { command -v dnsmasq || test -x /usr/sbin/dnsmasq; } >/dev/null || { \
		echo "installing dig and dnsmasq (bind9-dnsutils, dnsmasq-base) for integration/dns"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends bind9-dnsutils dnsmasq-base; }

# systemd-analyze verifies deploy/systemd's unit in integration/operator, and
# iptables with ip (iproute2) run docs/bare-metal.md's interception rules in a
# network namespace there; Debian's packages, installed when missing (systemd
# needs no running systemd).
unit-tools:
	@command -v systemd-analyze >/dev/null || { \
		echo "installing systemd-analyze (systemd) for integration/operator"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd; }
	@{ command -v iptables || test -x /usr/sbin/iptables; } >/dev/null && { command -v ip || test -x /usr/sbin/ip || test -x /sbin/ip; } >/dev/null || { \
		echo "installing iptables and iproute2 for integration/operator"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iptables iproute2; }

# Debian's Chromium is the browser integration/browser drives (chromedp) to
# test the admin status page; installed when missing, never downloaded by a
# test tool.
chromium:
	@command -v chromium >/dev/null || test -x /usr/bin/chromium || { \
		echo "installing chromium (Debian) for integration/browser"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }

## test-fuzz: every fuzz target briefly (seed corpora plus 3,000 inputs each;
## a count, not a duration, so Go 1.26's fuzz-deadline race cannot fail CI)
test-fuzz:
	GO=$(GO) FUZZ_MINIMIZETIME=1s tools/fuzz.sh 3000x

## fuzz: every fuzz target for FUZZTIME each (default 10m)
fuzz:
	GO=$(GO) tools/fuzz.sh $(or $(FUZZTIME),10m)

## bench: micro-benchmarks, then the workloads against the real binary and
## real peers (docs/performance.md). BENCH=Steady runs one fan-out workload
## (Steady, ManyStreams, Million, MillionInContainer: in a 2.5 GiB memory
## cgroup, HotFanout, Ramp, Idle, Storm). Last, the steady workload over xDS
## (EDS with ACKs) on tributary and on go-control-plane v0.14.0, alternated.
BENCH ?= .
bench: build
	$(GO) test -run '^$$' -bench . -benchmem ./cache/ ./destination/ ./discovery/
	TRIBUTARY_BIN=$(CURDIR)/$(BIN) $(GO) test -tags integration -run '^$$' -bench '$(BENCH)' -benchtime 1x -timeout 45m ./integration/bench/
	TRIBUTARY_BIN=$(CURDIR)/$(BIN) $(GO) test -tags integration -run '^$$' -bench . -benchtime 1x -timeout 30m ./integration/health/ ./integration/consul/ ./integration/kubernetes/ ./integration/dns/ ./integration/register/
	$(GO) build -o bin/tributary-bench ./cmd/tributary-bench
	bin/tributary-bench steady --api xds --bin $(BIN)

## soak: long runs with every correctness check on: the steady workload at
## 50,000 streams for 10 minutes, reconnect storms, and 10 minutes of fuzzing per target.
soak: build
	$(GO) build -o bin/tributary-bench ./cmd/tributary-bench
	bin/tributary-bench steady --bin $(BIN) --streams 50000 --duration 10m
	bin/tributary-bench storm --bin $(BIN)
	GO=$(GO) tools/fuzz.sh 10m

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...
	$(GO) vet -tags integration ./integration/...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

## peers: build every real peer (Consul, etcd, CoreDNS, kube-apiserver) into the cache
peers:
	tools/peers.sh all

clean:
	rm -rf bin

## proto: regenerate the Go code of proto/ with pinned plugins (protoc-gen-go
## at the google.golang.org/protobuf version of go.mod). protoc itself comes
## from Debian's protobuf-compiler, installed here when missing.
PROTOC_GEN_GO_GRPC := google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
PROTO_FILES := $(shell find proto -name '*.proto')
proto:
	@command -v protoc >/dev/null || { echo "protoc missing: installing Debian's protobuf-compiler"; apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev; }
	$(GO) build -o bin/protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go
	GOFLAGS=-mod=mod GOBIN=$(CURDIR)/bin $(GO) install $(PROTOC_GEN_GO_GRPC)
	protoc -I proto -I /usr/include \
		--plugin=protoc-gen-go=bin/protoc-gen-go --go_out=proto --go_opt=paths=source_relative \
		--plugin=protoc-gen-go-grpc=bin/protoc-gen-go-grpc --go-grpc_out=proto --go-grpc_opt=paths=source_relative \
		$(PROTO_FILES)
