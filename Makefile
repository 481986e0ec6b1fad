# onoff-bench: `make demo` sets everything up and runs the main job; `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-slow clean

install: $(STAMP)

# Re-runs only when the dependency spec or the PufferLib build script changes, so a second
# `make install` is a no-op; the PufferLib wheel is cached across clones (see the script).
$(STAMP): pyproject.toml scripts/install_pufferlib.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU build installs offline; a looser spec pulls CUDA wheels.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,build,ray,video,wandb]'
	$(PY) scripts/install_pufferlib.py
	@touch $(STAMP)

demo: install
	$(VENV)/bin/bench demo

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) build *.egg-info
