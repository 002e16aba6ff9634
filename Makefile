# Tally — see README.md.
GO       ?= go
BIN      := $(CURDIR)/bin
GOFLAGS  ?= -buildvcs=false
export GOFLAGS

.PHONY: all build test bench run demo-todos proto vet clean spire k8s node images helm

all: build

build: ## build tally-server, tally-agent, tallyctl and the demo into bin/
	$(GO) build -o $(BIN)/ ./cmd/... ./examples/...

images: ## tally-server and tally-agent image tarballs in bin/images, built without a Docker engine (docker load, ctr images import, crane push; see scripts/images)
	$(GO) run ./scripts/images -out $(BIN)/images

vet:
	$(GO) vet ./...

spire: ## SPIRE v1.13.3 from the Go module proxy, cached in .cache/spire (its CLI is tested against Tally)
	./scripts/spire/build.sh

k8s: ## kube-apiserver v1.37.2 and etcd from the Go module proxy, cached in .cache/k8s (tests run a real control plane)
	./scripts/k8s/build.sh

node: ## kubelet, kube-scheduler and kube-controller-manager v1.37.2 from the Go module proxy, cached in .cache/node (tests run a real node with containerd)
	./scripts/node/build.sh

helm: ## helm v3.22.0 from the Go module proxy, cached in .cache/helm (tests lint and render deploy/helm/tally)
	./scripts/helm/build.sh

stepca: ## step-ca v0.30.2 from the Go module proxy, cached in .cache/step-ca (tests use it as an upstream CA)
	./scripts/stepca/build.sh

test: build spire k8s node stepca helm ## every test (real badger, real gRPC over real sockets, real processes)
	$(GO) vet ./...
	TALLY_BIN=$(BIN) $(GO) test -count=1 -timeout 20m ./...

bench: build spire k8s ## benchmarks: signing vs the raw crypto floor, entry creation, large stores
	TALLY_BIN=$(BIN) ./scripts/bench.sh

run: build ## a local trust domain in a temp dir; Ctrl-C stops it
	./scripts/run-local.sh

demo-todos: build ## the todos demo (examples/todos): mTLS between services, requests on a user's behalf; DEMO_STAY=1 keeps it running
	./scripts/demo-todos.sh

proto: ## regenerate proto/tally/v1 (needs protoc, protoc-gen-go, protoc-gen-go-grpc)
	./proto/gen.sh

clean:
	rm -rf $(BIN)
