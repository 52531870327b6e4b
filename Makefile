# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= demo-output
PYTEST_ARGS ?=
# torch's version lives in the Dockerfile (the cluster image's pin); without CUDA, PyTorch's CPU index.
TORCH_VERSION := $(shell sed -n 's/^ARG TORCH_VERSION=//p' Dockerfile)
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: install demo test test-fast lint lock browser kustomize wordnet clean

$(BIN)/tpo-ray: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	# Without CUDA, the CPU torch wheel first, from PyTorch's CPU index as PyTorch documents, so no
	# dependency pulls the registry's CUDA build (several GB). Where that index cannot be reached, the
	# default index (whose Linux torch is the CUDA build unless a local CPU wheel is configured).
	if ! command -v nvidia-smi >/dev/null 2>&1; then \
	  if $(BIN)/python -c "import urllib.request; urllib.request.urlopen('$(TORCH_CPU_INDEX)/torch/', timeout=10)" 2>/dev/null; then \
	    $(BIN)/pip install --quiet torch==$(TORCH_VERSION) --index-url $(TORCH_CPU_INDEX); \
	  else \
	    echo "make: $(TORCH_CPU_INDEX) cannot be reached; torch==$(TORCH_VERSION) from the default index"; \
	    $(BIN)/pip install --quiet torch==$(TORCH_VERSION); \
	  fi; \
	fi
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/python -c "import torch; print('make: torch', torch.__version__, '(CUDA ' + str(torch.version.cuda) + ')' if torch.version.cuda else '(CPU build)')"
	touch $@

install: $(BIN)/tpo-ray wordnet

demo: install
	RAY_DATA_DISABLE_PROGRESS_BARS=1 $(BIN)/tpo-ray demo --output $(OUT)

test: install browser kustomize
	$(BIN)/python -m pytest tests --durations=15 $(PYTEST_ARGS)

# The report tests open reports in a real headless Chromium: the OS package where none is on PATH.
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
	    || command -v google-chrome >/dev/null 2>&1; then exit 0; fi; \
	echo "make: installing Chromium (apt-get) for the report tests"; \
	sudo=""; if [ "$$(id -u)" -ne 0 ]; then sudo="sudo"; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "make: no Chromium and no apt-get: install Chromium (or Chrome) and put it on PATH" >&2; exit 1; fi; \
	$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq chromium >/dev/null

# WordNet 3.0 (Debian's wordnet-base) for the negatives' still-true check (tpo_ray/negatives/wordnet.py): apt
# where it is missing and apt-get can run as root (or through sudo without a password). Where it cannot, a
# message and no failure: the check then uses the lexicon's lists alone.
WORDNET_DIR ?= /usr/share/wordnet
wordnet:
	@if [ -n "$$TPO_RAY_WORDNET" ] || [ -f $(WORDNET_DIR)/data.noun ]; then exit 0; fi; \
	sudo=""; if [ "$$(id -u)" -ne 0 ]; then sudo="sudo"; fi; \
	if ! command -v apt-get >/dev/null 2>&1 \
	    || { [ -n "$$sudo" ] && ! { command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; }; }; then \
	  echo "make: WordNet is not installed and apt-get cannot run here: the negatives' still-true check uses" \
	       "the lexicon only. Install Debian's wordnet-base, or set TPO_RAY_WORDNET to a WordNet 3.0 database folder" >&2; \
	  exit 0; fi; \
	echo "make: installing WordNet 3.0 (apt-get install wordnet-base) for the negatives' still-true check"; \
	{ $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq \
	    --no-install-recommends wordnet-base >/dev/null; } \
	  || echo "make: apt-get could not install wordnet-base: the still-true check uses the lexicon only" >&2

# The cluster tests render cluster/ with the real kustomize (`kubectl kustomize`, or `kustomize`): where
# neither is on PATH, kubectl from the Kubernetes project's apt repository, as its docs install it.
KUBECTL_MINOR ?= v1.32
kustomize:
	@if command -v kubectl >/dev/null 2>&1 || command -v kustomize >/dev/null 2>&1; then exit 0; fi; \
	echo "make: installing kubectl $(KUBECTL_MINOR) (apt, pkgs.k8s.io) for the cluster manifest tests"; \
	sudo=""; if [ "$$(id -u)" -ne 0 ]; then sudo="sudo"; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "make: no kubectl or kustomize and no apt-get: install kubectl >= 1.27 or kustomize >= 5 on PATH" >&2; exit 1; fi; \
	$$sudo apt-get update -qq && $$sudo apt-get install -y -qq curl gpg ca-certificates >/dev/null \
	&& $$sudo mkdir -p -m 755 /etc/apt/keyrings \
	&& curl -fsSL https://pkgs.k8s.io/core:/stable:/$(KUBECTL_MINOR)/deb/Release.key \
	   | $$sudo gpg --dearmor --yes -o /etc/apt/keyrings/kubernetes-apt-keyring.gpg \
	&& echo "deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] https://pkgs.k8s.io/core:/stable:/$(KUBECTL_MINOR)/deb/ /" \
	   | $$sudo tee /etc/apt/sources.list.d/kubernetes.list >/dev/null \
	&& $$sudo apt-get update -qq && $$sudo apt-get install -y -qq kubectl >/dev/null

test-fast: install
	$(BIN)/python -m pytest tests -m "not slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check tpo_ray tests benchmarks jobs image

# The cluster image's hashed lock (image/*.lock) from pyproject.toml and the Dockerfile's ARGs.
lock: install
	$(BIN)/pip install --quiet uv
	$(BIN)/python image/lock.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache
