# One-command setup: `make test` and `make run` each build what they need first.
# Setup is idempotent: a stamp file records the inputs it was built from, so a
# second run with nothing changed is a no-op.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
HOROVOD_VERSION := 0.28.1
TORCH_VERSION := 2.13.0
# Outside the repo, so fresh clones, CI runs and `make clean` reuse it.
WHEEL_CACHE ?= $(HOME)/.cache/shopseq/wheels/horovod-$(HOROVOD_VERSION)-torch$(TORCH_VERSION)-$(shell $(PYTHON) -c 'import sys;print(f"cp{sys.version_info[0]}{sys.version_info[1]}")' 2>/dev/null)
# Delta Lake for Spark 3.5 (Scala 2.12): the JARs local Spark loads (jobs/spark.py), fetched once with mvn.
# Keep equal to the delta-spark pin in constraints.txt (tests/test_config.py checks).
DELTA_VERSION := 3.2.1
DELTA_JARS ?= $(HOME)/.cache/shopseq/jars/delta-$(DELTA_VERSION)
STAMP := $(VENV)/.shopseq-setup
PYTEST_ARGS ?=

.PHONY: setup test test-fast run bench clean help

help:
	@echo "make test   set up .venv (first time a few minutes: the Horovod build, then cached) and run the test suite"
	@echo "make run    set up .venv and run the whole pipeline locally (shopseq run)"
	@echo "make peer-recbole  RecBole's own venv outside the repo, for shopseq bench quality --peer recbole"
	@echo "make dist   the wheel (conf inside) and the --py-files zip in dist/, for spark-submit (docs/operations.md)"
	@echo "make dist-env  also a packed environment (venv-pack) in dist/, for spark-submit --archives"

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	@echo "== setup: $(VENV) with pinned dependencies (constraints.txt)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24" "setuptools>=77" wheel
	# torch first, exact version. On the 2026-12-02 machines this pulls the PyPI build torch 2.13.0+cu130 (CUDA libraries, several GB; runs on CPU too).
	$(PIP) install -q -c constraints.txt torch==$(TORCH_VERSION)
	$(PIP) install -q -c constraints.txt -e '.[local,bench,tracking,test,notebook]'
	$(MAKE) --no-print-directory horovod delta-jars
	$(PY) -c "import importlib.metadata, pyspark, delta, petastorm, torch, horovod.torch; print('stack:', 'pyspark', pyspark.__version__, '| delta-spark', importlib.metadata.version('delta-spark'), '| petastorm', petastorm.__version__, '| torch', torch.__version__, '| horovod', horovod.__version__)"
	touch $(STAMP)

# Delta Lake's JARs (delta-spark + delta-storage; Spark ships antlr4-runtime) from Maven Central with
# the machine's mvn, into $(DELTA_JARS) outside the repo; jobs/spark.py puts them on spark.jars.
.PHONY: delta-jars
delta-jars:
	@if ! ls $(DELTA_JARS)/delta-spark_2.12-$(DELTA_VERSION).jar $(DELTA_JARS)/delta-storage-$(DELTA_VERSION).jar >/dev/null 2>&1; then \
	  set -euo pipefail; echo "== fetching Delta Lake $(DELTA_VERSION) JARs with mvn into $(DELTA_JARS)"; \
	  command -v mvn >/dev/null || { echo "mvn not found: install Maven, or put delta-spark_2.12-$(DELTA_VERSION).jar and delta-storage-$(DELTA_VERSION).jar into $(DELTA_JARS)"; exit 2; }; \
	  mkdir -p $(DELTA_JARS); \
	  for a in io.delta:delta-spark_2.12:$(DELTA_VERSION) io.delta:delta-storage:$(DELTA_VERSION); do \
	    mvn -q -B dependency:copy -Dartifact=$$a -DoutputDirectory=$(DELTA_JARS); \
	  done; \
	fi

# Horovod 0.28.1 from its sdist with C++17 (torch >= 2.1 headers need it; fixed
# upstream in PR #3998, unreleased). Built once into $(WHEEL_CACHE), reused after.
.PHONY: horovod
horovod:
	@if ! ls $(WHEEL_CACHE)/horovod-$(HOROVOD_VERSION)-*.whl >/dev/null 2>&1; then \
	  set -euo pipefail; echo "== building horovod $(HOROVOD_VERSION) wheel (about 5 min on 2 cores)"; \
	  tmp=$$(mktemp -d); \
	  $(PIP) install -q -c constraints.txt cloudpickle psutil pyyaml packaging cffi; \
	  $(PIP) download -q --no-deps --no-binary :all: horovod==$(HOROVOD_VERSION) -d $$tmp; \
	  tar -xzf $$tmp/horovod-$(HOROVOD_VERSION).tar.gz -C $$tmp; \
	  src=$$tmp/horovod-$(HOROVOD_VERSION); \
	  sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' $$src/CMakeLists.txt $$src/horovod/torch/CMakeLists.txt; \
	  grep -q 'CMAKE_CXX_STANDARD 17' $$src/horovod/torch/CMakeLists.txt; \
	  HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_TENSORFLOW=1 \
	  HOROVOD_WITHOUT_MXNET=1 HOROVOD_CPU_OPERATIONS=gloo MAKEFLAGS=-j$$(nproc) \
	    $(PIP) wheel -q --no-deps --no-build-isolation -w $$tmp/dist $$src; \
	  mkdir -p $(WHEEL_CACHE); cp $$tmp/dist/horovod-*.whl $(WHEEL_CACHE)/; rm -rf $$tmp; \
	fi
	$(PIP) install -q -c constraints.txt cloudpickle psutil pyyaml packaging cffi
	$(PIP) install -q --no-deps $(WHEEL_CACHE)/horovod-$(HOROVOD_VERSION)-*.whl

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not e2e" $(PYTEST_ARGS)

run: $(STAMP)
	$(VENV)/bin/shopseq run $(RUN_ARGS)

bench: $(STAMP)
	$(VENV)/bin/shopseq bench sessionize --events 1000000,10000000

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache spark-warehouse shopseq-data

# Packaging for spark-submit on any cluster manager (docs/operations.md#on-a-cluster-spark-submit), into $(DIST):
# - the wheel: one namespace, shopseq/{jobs,features,training,conf} (conf: the config loader's fallback when no
#   conf folder is given);
# - the --py-files zip: the wheel's packages and conf without its metadata (PySpark puts .zip, .egg and .jar
#   files on the executors' sys.path, never a .whl), plus an entry for each folder: the wheel has none, and
#   Python 3.11's zipimport finds the namespace package `shopseq` (no __init__.py) only by its `shopseq/` entry.
# `make dist-env` adds a packed environment for --archives (venv-pack): a fresh venv in $(DIST_ENV_VENV) with the
# wheel, its dependencies under constraints.txt and Horovod. Its python links to $(PYTHON)'s installation, which the
# nodes need at the same path (or DIST_ENV_PYTHON_PREFIX=<that Python's prefix on the nodes>).
DIST ?= dist
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
WHEEL := $(DIST)/shopseq-$(VERSION)-py3-none-any.whl
PYFILES_ZIP := $(DIST)/shopseq-$(VERSION)-pyfiles.zip
ENV_PACK := $(DIST)/shopseq-$(VERSION)-env.tar.gz
DIST_ENV_VENV ?= build/dist-env
DIST_ENV_EXTRAS ?= cluster,tracking
DIST_ENV_PYTHON_PREFIX ?=
VENV_PACK_VERSION := 0.2.0

.PHONY: dist dist-env
dist: $(STAMP)
	rm -rf build/lib build/bdist.* $(WHEEL) $(PYFILES_ZIP)   # setuptools reuses build/lib: a deleted module would stay in the wheel
	$(PIP) wheel -q --no-deps --no-build-isolation -w $(DIST) .
	$(PY) -c 'import sys, zipfile; whl, out = zipfile.ZipFile(sys.argv[1]), zipfile.ZipFile(sys.argv[2], "w", zipfile.ZIP_DEFLATED); \
	  items = [i for i in whl.infolist() if ".dist-info/" not in i.filename]; \
	  [out.writestr(d, b"") for d in sorted({i.filename[: k + 1] for i in items for k, c in enumerate(i.filename) if c == "/"})]; \
	  [out.writestr(i, whl.read(i)) for i in items]; out.close()' $(WHEEL) $(PYFILES_ZIP)
	@echo "== $(WHEEL) (pip install it: conf inside) and $(PYFILES_ZIP) (--py-files)"

dist-env: dist
	@set -euo pipefail; echo "== dist-env: $(DIST_ENV_VENV) packed into $(ENV_PACK) (torch $(TORCH_VERSION) and its CUDA libraries: GBs)"; \
	rm -rf $(DIST_ENV_VENV) $(ENV_PACK); $(PYTHON) -m venv $(DIST_ENV_VENV); \
	pip="$(DIST_ENV_VENV)/bin/python -m pip --disable-pip-version-check"; \
	$$pip install -q --upgrade "pip>=24" "setuptools>=77" wheel; \
	$$pip install -q -c constraints.txt torch==$(TORCH_VERSION); \
	$$pip install -q -c constraints.txt "$(WHEEL)[$(DIST_ENV_EXTRAS)]" cloudpickle psutil pyyaml packaging cffi; \
	$$pip install -q --no-deps $(WHEEL_CACHE)/horovod-$(HOROVOD_VERSION)-*.whl; \
	$(DIST_ENV_VENV)/bin/python -c "import shopseq.jobs.config, shopseq.training.model, horovod.torch, pyspark, delta; shopseq.jobs.config.load_config('cluster')"; \
	$(PIP) install -q venv-pack==$(VENV_PACK_VERSION); \
	$(VENV)/bin/venv-pack -p $(DIST_ENV_VENV) -o $(ENV_PACK) $(if $(DIST_ENV_PYTHON_PREFIX),--python-prefix $(DIST_ENV_PYTHON_PREFIX)); \
	ls -l $(ENV_PACK)

# RecBole (SASRec, GRU4Rec) as the peer of `shopseq bench quality --peer recbole`. recbole 1.2.1 needs
# numpy < 2 and older packages, so it lives in its own venv outside the repo (reused like the Horovod
# wheel cache), never in $(VENV). Not a prerequisite of `make test`: tests/test_peer_recbole.py skips
# without it. The stamp holds a hash of the interpreter and the pins, so a re-run with both unchanged
# does nothing. recbole goes in with --no-deps (see peers/recbole-constraints.txt for why).
# Same default and override as `shopseq bench quality` (SHOPSEQ_RECBOLE_VENV).
RECBOLE_VENV ?= $(or $(SHOPSEQ_RECBOLE_VENV),$(HOME)/.cache/shopseq/recbole-venv)
RECBOLE_PINS := peers/recbole-constraints.txt
RECBOLE_PIP := $(RECBOLE_VENV)/bin/python -m pip --disable-pip-version-check

.PHONY: peer-recbole
peer-recbole:
	@set -euo pipefail; stamp=$(RECBOLE_VENV)/.shopseq-recbole; \
	want=$$({ $(PYTHON) --version; cat $(RECBOLE_PINS); } | sha256sum | cut -d' ' -f1); \
	if [ -x $(RECBOLE_VENV)/bin/python ] && [ "$$(cat $$stamp 2>/dev/null)" = "$$want" ]; then \
	  echo "== peer-recbole: $(RECBOLE_VENV) is up to date"; exit 0; fi; \
	echo "== peer-recbole: $(RECBOLE_VENV) (first time a few minutes: torch and its CUDA wheels)"; \
	rm -f $$stamp; test -x $(RECBOLE_VENV)/bin/python || $(PYTHON) -m venv $(RECBOLE_VENV); \
	$(RECBOLE_PIP) install -q --upgrade "pip>=24" "setuptools>=77" wheel; \
	$(RECBOLE_PIP) install -q -c $(RECBOLE_PINS) torch numpy pandas scipy scikit-learn pyyaml tqdm \
	  colorlog colorama texttable tensorboard; \
	$(RECBOLE_PIP) install -q --no-deps -c $(RECBOLE_PINS) recbole; \
	$(RECBOLE_VENV)/bin/python -c "import recbole, torch, numpy, pandas, recbole.trainer, recbole.model.sequential_recommender as s; s.SASRec, s.GRU4Rec; print('recbole', recbole.__version__, '| torch', torch.__version__, '| numpy', numpy.__version__, '| pandas', pandas.__version__)"; \
	echo "$$want" > $$stamp
