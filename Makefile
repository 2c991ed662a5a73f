# The two commands of the README:
#   make book   builds the book into build/ (HTML with both tabs, one notebook
#               per tab, Colab notebooks), setting up .venv/ the first time
#   make test   runs the tests (what CI runs, through .ci/run)
#
# Switches, as environment variables or make arguments:
#   QUICK=1 / QUICK=0   force quick mode / the full settings (default: quick
#                       mode on a machine without a GPU)
#   OFFLINE=1           never download; use cached data or the offline stand-in

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV := $(CURDIR)/.venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
# The npm packages of package.json (MathJax, served by the HTML book itself).
# The tests build a copy of the book with NODE_MODULES pointing here.
NODE_MODULES := $(CURDIR)/node_modules
# d2lbook calls sphinx-build through the shell: the venv's bin must be on PATH.
export PATH := $(VENV)/bin:$(PATH)
ifdef QUICK
export D2L_VIT_QUICK := $(QUICK)
endif
ifdef OFFLINE
export D2L_VIT_OFFLINE := $(OFFLINE)
endif

.PHONY: book build lib eval html pdf test test-fast venv js-deps system-deps constraints clean

book: system-deps venv js-deps
	$(MAKE) build

# The d2lbook steps alone, for an environment that is already set up (the
# tests build a copy of the book this way).
build: html

venv: $(INSTALLED)

$(INSTALLED): requirements.txt constraints.txt pyproject.toml tools/fix_torchvision_cpu_import.py
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet -r requirements.txt -c constraints.txt
	$(PYTHON) -m pip install --quiet --no-deps d2l==1.0.3
	$(PYTHON) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PYTHON) tools/fix_torchvision_cpu_import.py
	touch $@

js-deps: node_modules/.installed

# npm ci installs exactly what package-lock.json pins into ./node_modules.
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# System packages, installed with apt when missing (and we are root), as
# command:packages pairs (packages separated by commas): pandoc for d2lbook's
# HTML build, npm for js-deps, git and make for the tests' copies of the book,
# chromium for the browser test of the built book (tests/test_site_browser.py),
# XeLaTeX with the LaTeX packages and fonts that Sphinx's LaTeX output uses and
# rsvg-convert for its SVG figures, for `make pdf` (tests/test_pdf.py).
SYSTEM_DEPS := pandoc:pandoc npm:npm git:git make:make chromium:chromium \
	xelatex:texlive-xetex,texlive-latex-extra,fonts-freefont-otf latexmk:latexmk \
	rsvg-convert:librsvg2-bin
# Data as file:package: the real Fashion-MNIST from Debian, so that the book
# trains on it offline. Where apt is missing the loader downloads it instead.
SYSTEM_DATA := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz:dataset-fashion-mnist
system-deps:
	@missing=; for dep in $(SYSTEM_DEPS); do \
	  command -v $${dep%%:*} >/dev/null || missing="$$missing $$(echo $${dep#*:} | tr , ' ')"; done; \
	data=; for dep in $(SYSTEM_DATA); do test -e $${dep%%:*} || data="$$data $${dep#*:}"; done; \
	if [ -n "$$missing$$data" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing with apt-get:$$missing$$data"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing $$data >/dev/null; \
	elif [ -n "$$missing" ]; then \
	  echo "missing:$$missing (install with, for example: sudo apt-get install$$missing)" >&2; exit 1; \
	elif [ -n "$$data" ]; then \
	  echo "note:$$data is not installed: Fashion-MNIST will be downloaded (sudo apt-get install$$data)"; fi

# Write the #@save code of the chapter into d2l_extras/ (below the WARNING
# marker), each saved object keeping its whole docstring (see the script).
lib:
	d2lbook build lib
	$(PYTHON) tools/merge_saved_docstrings.py d2l_extras/torch.py d2l_extras/jax.py

# Both tabs' notebooks are evaluated by one queue, two at a time on a machine
# without a GPU, longest first (tools/eval_both_tabs.py), with the kernels'
# environment of tools/kernel_env.py: each PyTorch kernel gets half of the
# cores, JAX keeps its compiled programs in build/jax_cache, and on a CPU XLA
# compiles with -O2, which the quick runs favour. Why, with the measurements:
# benchmarks/README.md, "Building the book".
eval: lib
	@mkdir -p build; start=$$SECONDS; \
	$(PYTHON) tools/eval_both_tabs.py --jax-cache $(CURDIR)/build/jax_cache; \
	echo "=== Both tabs evaluated in $$(( SECONDS - start )) s"

# Merges both tabs into one site; also writes the Colab notebooks. Then makes
# the site load nothing from the network (MathJax, icons: see the script).
html: eval
	d2lbook build html --tab all
	$(PYTHON) tools/offline_site.py build/html --mathjax $(NODE_MODULES)/mathjax --copy-button static/copy-button.svg

# The book as PDF, one per framework: build/pdf/d2l-vit.pdf (PyTorch) and
# build/pdf_jax/d2l-vit-jax.pdf (JAX), typeset with XeLaTeX from the notebooks
# that `make book` evaluated (d2lbook evaluates any that are missing or out of
# date first).
pdf: system-deps venv
	d2lbook build pdf
	d2lbook build pdf --tab jax

# Two runs of pytest: first the tests of test-fast, one process per core
# (most are small and single-threaded); then those of the built book and of
# the Colab venvs, in one process, whose builds and notebooks already keep
# two cores busy. Both run even when the first fails; make fails if either did.
test: system-deps venv js-deps
	@status=0; $(MAKE) --no-print-directory test-fast || status=$$?; \
	$(PYTHON) -m pytest -m 'book or slow' || status=$$?; exit $$status

# Everything but the tests of the built book and of fresh environments, in
# minutes, one process per core: for a change to the library or the tests.
# JAX keeps its compiled programs between runs, as the book build does: most
# of the JAX tests' time is compiling.
test-fast: venv js-deps
	JAX_COMPILATION_CACHE_DIR=$${JAX_COMPILATION_CACHE_DIR:-$(CURDIR)/build/jax_cache_tests} \
	JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 \
	$(PYTHON) -m pytest -m 'not book and not slow' -n auto

# Refresh constraints.txt from the current environment after changing requirements.txt.
constraints: venv
	{ echo '# Every transitive dependency, pinned to the versions the book was built and tested with.'; \
	  echo '# Regenerate with: make constraints'; \
	  $(PYTHON) -m pip freeze --exclude-editable | grep -v -E '^(d2l==|d2l-extras)' | sed 's/+cpu$$//'; } > constraints.txt

clean:
	rm -rf build
