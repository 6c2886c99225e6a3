# The two commands of the README's quick start, plus the benchmark.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: lock test lint typecheck pytest kube helm cni charts image demo bench clean

# Every dependency's version comes from requirements.lock (made by `make lock`);
# pyproject.toml keeps only the lower bounds.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	PIP_CONSTRAINT=$(CURDIR)/requirements.lock $(BIN)/python -m pip install --quiet \
		--disable-pip-version-check -e '.[test]'
	touch $(STAMP)

# Refresh the lock after changing dependencies in pyproject.toml (uv resolves; pip installs).
# The lock covers the build backend too (pyproject's [build-system] requires, repeated here).
UV_VERSION := 0.13.9
lock: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	printf 'setuptools>=68\n' | $(BIN)/uv pip compile pyproject.toml - --extra test \
		--python-version 3.11 --python-platform x86_64-manylinux_2_28 --upgrade \
		--no-header -o requirements.lock

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

# The Kubernetes control plane tests/kube runs against (etcd, kube-apiserver,
# kube-controller-manager) and kubectl, built from their Go modules with the machine's Go (>= 1.26)
# into .cache/kube/bin; nothing is built when they are current. Minutes from empty
# Go caches, seconds from warm ones (README, "Testing").
kube:
	tests/kube/build.sh

# Helm, from its Go module (tests/helm/go.mod), into .cache/helm/bin for tests/helm
# (helm lint, helm template); nothing is built when it is current.
helm:
	tests/helm/build.sh

# The CNI reference plugins (bridge, host-local, loopback) and cnitool, from their Go
# modules (tests/cni/go.mod), into .cache/cni/bin for tests/node (ambit-cni chained after
# them); nothing is built when they are current.
cni:
	tests/cni/build.sh

# charts/ is generated from k8s/crds.py, k8s/install.py and k8s/install_node.py: run after
# changing one.
charts: $(STAMP)
	$(BIN)/python -m k8s.charts

# The ambit image (Dockerfile: install/install-ambit.sh into /opt/ambit), tagged with the
# name `ambit install` and the charts use by default (k8s/install.py; a test checks).
VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)
# Another name: make image IMAGE=registry.example/ambit:TAG (the environment's IMAGE is ignored).
IMAGE := ambit:$(VERSION)
image:
	@command -v docker >/dev/null || { echo "make image needs docker, which is not installed here"; exit 1; }
	docker build --build-arg VERSION=$(VERSION) -t $(IMAGE) .

demo: $(STAMP)
	@if [ "$$(id -u)" != 0 ]; then echo "make demo needs root (network namespaces, iptables): try sudo make demo"; exit 1; fi
	@command -v iptables >/dev/null || { echo "installing iptables"; apt-get install -y -qq iptables >/dev/null; }
	$(BIN)/ambit up -f examples/demo.yaml
	@echo
	@echo '$$ ambit exec -n demo client -- curl -s -o /dev/null -w "HTTP %{http_code}\n" http://server/'
	@$(BIN)/ambit exec -n demo client -- curl -s -o /dev/null -w "HTTP %{http_code}\n" http://server/
	@echo
	@echo "node-2's ztunnel logged it (mutual TLS, both SPIFFE identities):"
	@sleep 0.5; $(BIN)/ambit logs ztunnel/node-2 | grep connection_complete | tail -n 1
	@echo
	@echo '$$ ambit apply -f examples/waypoint.yaml    # a waypoint for namespace demo, and an HTTPRoute'
	@$(BIN)/ambit apply -f examples/waypoint.yaml
	@for i in $$(seq 150); do \
		$(BIN)/ambit exec -n demo client -- curl -s -D - -o /dev/null http://server/ 2>/dev/null | grep -qi x-served-by && break; \
		sleep 0.2; done
	@echo '$$ ambit exec -n demo client -- curl -s -D - -o /dev/null http://server/'
	@$(BIN)/ambit exec -n demo client -- curl -s -D - -o /dev/null http://server/ | grep -Ei '^(HTTP|x-served-by)'
	@echo "the waypoint logged it (the route's answer, both identities):"
	@sleep 0.5; $(BIN)/ambit logs waypoint/demo/waypoint | grep '"event": "request"' | tail -n 1
	@echo
	@echo '$$ ambit why demo/client demo/server --path /old    # what each proxy decides, and why'
	@$(BIN)/ambit why demo/client demo/server --path /old
	@echo
	@echo "Try: $(BIN)/ambit why demo/client demo/server --method POST    $(BIN)/ambit get workloads -A"
	@echo "See it live in a browser: $(BIN)/ambit dashboard    (prints a one-time link; Ctrl-C stops it)"
	@echo "Remove it all: $(BIN)/ambit down"

# bench.compare needs root (network namespaces, iptables; apt-get for the baselines' tools).
bench: $(STAMP)
	@if [ "$$(id -u)" != 0 ]; then echo "make bench needs root (network namespaces, iptables): try sudo make bench"; exit 1; fi
	$(BIN)/python -m bench.compare $(if $(QUICK),--quick,)
	$(BIN)/python -m bench.hbone $(if $(QUICK),--quick,--json bench/results/hbone.json)
	$(BIN)/python -m bench.perconn $(if $(QUICK),-n 500 --repeat 3,--json bench/results/perconn.json)
	$(BIN)/python -m bench.translate $(if $(QUICK),--quick,)
	$(BIN)/python -m bench.resilience $(if $(QUICK),--quick,--json bench/results/resilience.json)
	$(BIN)/python -m bench.tap $(if $(QUICK),--quick,--json bench/results/tap.json)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
