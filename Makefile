# Two entry points, both usable on a fresh clone with python3 (>= 3.11), a C
# compiler and make: `make run` (the main job) and `make test` (the suite).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test soak bench clean

# (Re)install when the build inputs change; the C extensions build in place.
C_SOURCES := $(wildcard ringbuf/*.[ch] procmgr/*.[ch] procmgr/*/*.[ch] procmgr/*/*/*.[ch] spawnd_workers/*.[ch])
$(STAMP): pyproject.toml setup.py ringbuf/build.py procmgr/protocol/build.py $(C_SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# The main job: the ring between two processes, then a short storm of real
# programs on 4 simulated cores, checked for lost replies, wrong statuses,
# zombies, orphans and leaked segments.
run: $(STAMP)
	$(PY) -m ringbuf.demo
	$(PY) -m procmgr storm --cores 4 --clients 3 --ops 200

test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q

soak: $(STAMP)
	$(PY) -m pytest -m slow -q

bench: $(STAMP)
	$(PY) -m pytest bench -q

clean:
	rm -rf $(VENV) build *.egg-info ringbuf/*.so ringbuf/_cffi_ring.c procmgr/protocol/_defs.c
	find procmgr spawnd_workers -name '*.so' -delete
