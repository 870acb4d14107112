# Two entry points, both usable on a fresh clone with python3 (>= 3.11), a C
# compiler and make: `make run` (the main job) and `make test` (the suite).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test soak bench clean

# (Re)install when the build inputs change; the C extensions build in place.
$(STAMP): pyproject.toml setup.py ringbuf/build.py ringbuf/_ring.h ringbuf/_ring.c ringbuf/_fastpath.c procmgr/_wire.c procmgr/_wire.h procmgr/_loop.c procmgr/_core.c procmgr/_core.h procmgr/_map.h procmgr/_pending.c spawnd_workers/_spawnd.c spawnd_workers/_rotator.c spawnd_workers/_rotator.h
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
	rm -rf $(VENV) build *.egg-info ringbuf/*.so ringbuf/_cffi_ring.c
