# kvsync's build and test entry points. `make test` is the whole suite; CI
# runs exactly it (.ci/run).

GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
FUZZTIME  ?= 20s
# Go minimizes every newly interesting input for up to a minute, during which
# a worker runs nothing new: in a 20 s budget that was most of the time.
FUZZFLAGS := -fuzztime $(FUZZTIME) -fuzzminimizetime 2s

DIST      ?= dist

.PHONY: build test vet vulncheck unit fuzz deploy-check kube-assets bench deb dist

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/kvsync ./cmd/kvsync

# The container image around bin/kvsync (deploy/container/README.md). BASE
# empty keeps the Dockerfile's digest-pinned distroless; CI, with no
# registry, passes a local image of the same contents.
BUILDER ?= podman
IMAGE   ?= kvsync:$(VERSION)
BASE    ?=
.PHONY: image
image: build
	$(BUILDER) build -f deploy/container/Dockerfile --build-arg VERSION=$(VERSION) \
	  $(if $(BASE),--build-arg BASE=$(BASE)) -t $(IMAGE) .

# The whole suite: static checks, the deployment checks, the kube-apiserver
# and etcd of the leader-election tests, each fuzz target for a bounded time,
# and every test under the race detector (last, so its summary closes the
# output). WITH_KUBE_ASSETS, set for test and so for its prerequisites, has
# unit hand those binaries to the tests (KVSYNC_KUBE_ASSETS): in CI they
# fail without them.
test: WITH_KUBE_ASSETS := 1
test: vet vulncheck deploy-check kube-assets fuzz unit

vet:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

# govulncheck, where its database (or GOVULNDB's mirror) can be reached;
# elsewhere it says it could not check and passes.
vulncheck:
	bash .ci/vulncheck

# -timeout is per package: cmd/kvsync, with its chaos runs and the leader
# scenarios, took 9-11 minutes under -race on two cores shared with other
# work, too near the 15 minutes it had.
# `make unit` alone, as any user, leaves KVSYNC_KUBE_ASSETS to the
# environment: unset, the tests that need an API server skip (outside CI).
unit:
	$(if $(WITH_KUBE_ASSETS),dir=$$(bash $(KUBE_ASSETS_SH)) && export KVSYNC_KUBE_ASSETS="$$dir" &&) \
	  $(GO) test -race -timeout 25m ./...

# kube-apiserver (built from the Go module proxy: about 9 minutes on 2 cores
# cold, 0.6 GB of modules and 2 GB of build cache) and Debian's etcd, in a
# directory keyed by version under ~/.cache/kvsync; reused when present, so
# only a fresh machine pays for the build. Before fuzz, which runs for a fixed
# time and would fuzz less beside a build, and apart from deploy-check, whose
# readiness deadlines a build on the same 2 cores would eat into.
KUBE_ASSETS_SH := deploy/kubernetes/apiserver/assets.sh
kube-assets:
	bash $(KUBE_ASSETS_SH) >/dev/null

# Each target runs alone: go test -fuzz takes one target per invocation.
# .ci/fuzz tells a failing input from Go 1.26's end-of-time race.
fuzz:
	bash .ci/fuzz FuzzKeyFor ./watcher $(FUZZFLAGS)
	bash .ci/fuzz FuzzParseSidecar ./watcher $(FUZZFLAGS)
	bash .ci/fuzz FuzzEnvelope ./kvapi $(FUZZFLAGS)
	bash .ci/fuzz FuzzJSONEscaping ./kvapi $(FUZZFLAGS)
	bash .ci/fuzz FuzzBulkPairLen ./kvapi $(FUZZFLAGS)
	bash .ci/fuzz FuzzEmulatorRequest ./internal/emulator $(FUZZFLAGS)
	bash .ci/fuzz FuzzDecodePlain ./internal/state $(FUZZFLAGS)

deploy-check:
	bash deploy/ci.sh

# kvsync_<version>_{amd64,arm64}.deb in $(DIST), built with dpkg-deb
# (deploy/debian/build-deb.sh).
deb:
	VERSION='$(VERSION)' bash deploy/debian/build-deb.sh -o '$(DIST)' amd64 arm64

# The release files in $(DIST): static binaries and packages for linux/amd64
# and linux/arm64, and SHA256SUMS; reproducible (deploy/debian/dist-test.sh).
dist:
	VERSION='$(VERSION)' bash deploy/debian/dist.sh '$(DIST)'

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...
