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
# d2lbook calls sphinx-build through the shell: the venv's bin must be on PATH.
export PATH := $(VENV)/bin:$(PATH)
ifdef QUICK
export D2L_VIT_QUICK := $(QUICK)
endif
ifdef OFFLINE
export D2L_VIT_OFFLINE := $(OFFLINE)
endif

.PHONY: book build lib eval html test venv system-deps constraints clean

book: venv system-deps
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

# pandoc is a system package; d2lbook's HTML build needs it.
system-deps:
	@command -v pandoc >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pandoc >/dev/null; \
	  else echo 'pandoc is missing: install it (for example: sudo apt-get install pandoc)' >&2; exit 1; fi; }

# Write the #@save code of the chapter into d2l_extras/ (below the WARNING marker).
lib:
	d2lbook build lib

eval: lib
	d2lbook build eval
	d2lbook build eval --tab jax

# Merges both tabs into one site; also writes the Colab notebooks.
html: eval
	d2lbook build html --tab all

test: venv system-deps
	$(PYTHON) -m pytest

# Refresh constraints.txt from the current environment after changing requirements.txt.
constraints: venv
	{ echo '# Every transitive dependency, pinned to the versions the book was built and tested with.'; \
	  echo '# Regenerate with: make constraints'; \
	  $(PYTHON) -m pip freeze --exclude-editable | grep -v -E '^(d2l==|d2l-extras)' | sed 's/+cpu$$//'; } > constraints.txt

clean:
	rm -rf build
