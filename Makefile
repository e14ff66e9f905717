# fastvfs: set-up, tests and the demo.  Every target installs what it needs on a fresh
# Debian 12 machine (run as root).
PYTHON ?= python3
VENV ?= .venv
PY = $(VENV)/bin/python
# libseccomp2: the daemon's seccomp filter (apt depends on it, so every Debian has it).
APT_PACKAGES = qemu-system-x86 busybox-static cpio kmod liburing-dev libseccomp2 fio gcc python3-dev python3-venv strace
# The coverage-guided fuzzing of fuzz/: clang builds the hot path with SanitizerCoverage.
FUZZ_APT_PACKAGES = clang
PYTEST_ARGS ?=
# libvirt's daemon and QEMU driver, for tests/guest/test_libvirt.py (a real libvirt starting
# fastvfs); recommends (dnsmasq, firewall tools, ...) are not needed.
LIBVIRT_PACKAGES = libvirt-daemon-system libvirt-clients libvirt-daemon-driver-qemu

DEPLOYED ?= .venv-deployed
FASTVFS_BIN = $(CURDIR)/$(DEPLOYED)/bin/fastvfs

.PHONY: deps libvirt-deps fuzz-deps fuzz-build fuzz fuzz-seeds venv build dist deployed test test-all demo micro micro-pytest ops-bench bench perf-gate clean
# The fuzzing set-up: the instrumented build of the extensions (a separate build directory:
# the in-place build stays the plain one), the harnesses, and the long run's corpus and crashes.
FUZZ_NATIVE = build/fuzz-lib
FUZZ_TARGETS = fuse_engine vhost_user ring
FUZZ_TIME ?= 300
FUZZ_COVERAGE = -fsanitize-coverage=inline-8bit-counters,pc-table,trace-cmp


# apt-get install whatever of the listed packages is missing.
define apt_install
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
endef

deps:
	$(call apt_install,$(APT_PACKAGES))

fuzz-deps:
	$(call apt_install,$(FUZZ_APT_PACKAGES))

libvirt-deps:
	@missing=$$(for p in $(LIBVIRT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,fuzz]'
	touch $@

venv: deps $(VENV)/.installed

# Rebuild the extensions in place after editing a .pyx file (the harness's C load driver too).
build: venv
	FASTVFS_HARNESS=1 $(PY) setup.py -q build_ext --inplace

# The extensions built with clang and SanitizerCoverage into $(FUZZ_NATIVE), for the fuzzing
# harnesses (FASTVFS_FUZZ_NATIVE points them there): libFuzzer then sees the C code's edges and
# comparisons.
fuzz-build: venv fuzz-deps
	CC=clang LDSHARED="clang -shared" CFLAGS="$(FUZZ_COVERAGE)" \
	    $(PY) setup.py -q build_ext -b $(FUZZ_NATIVE) -t build/fuzz-temp

# The long fuzzing run: each target for FUZZ_TIME seconds from its seeds (fuzz/corpus/<target>)
# and what earlier long runs found (build/fuzz-corpus/<target>); logs in build/fuzz-<target>.log,
# crashing inputs in build/fuzz-artifacts/.
fuzz: build fuzz-build
	mkdir -p build/fuzz-artifacts
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p build/fuzz-corpus/$$t; \
	  FASTVFS_FUZZ_NATIVE=$(FUZZ_NATIVE) $(PY) fuzz/fuzz_$$t.py -max_total_time=$(FUZZ_TIME) \
	      -timeout=10 -print_final_stats=1 -artifact_prefix=build/fuzz-artifacts/$$t- \
	      build/fuzz-corpus/$$t fuzz/corpus/$$t > build/fuzz-$$t.log 2>&1 \
	    || { tail -60 build/fuzz-$$t.log; exit 1; }; \
	  echo "== $$t"; grep -E '^#[0-9]+ +(INITED|DONE)|^stat::' build/fuzz-$$t.log; \
	done

# Regenerate the committed seed corpora from the FUSE client and the vhost-user frontend.
fuzz-seeds: build
	$(PY) fuzz/make_seeds.py

# The distribution: an sdist, and the wheel built from that sdist (so a file the sdist lacks
# fails here), in dist/.
dist: venv
	rm -rf dist build/sdist-wheel
	$(PY) setup.py -q sdist -d dist
	$(PY) -m pip wheel -q --no-deps --no-build-isolation -w dist dist/fastvfs-*.tar.gz

# fastvfs as a user installs it: the wheel in a fresh virtual environment of its own.  The
# tests start this $(FASTVFS_BIN).
deployed: dist
	$(PYTHON) -m venv --clear $(DEPLOYED)
	$(DEPLOYED)/bin/pip install -q dist/fastvfs-*.whl

# The test command: unit and integration tests, the short fuzzing run (tests/fuzz, the hot path
# instrumented), and the real-guest tests (QEMU + Debian kernel, and a real libvirt), every
# daemon started from the installed wheel.
test: build fuzz-build deployed libvirt-deps
	FASTVFS_BIN=$(FASTVFS_BIN) FASTVFS_FUZZ_NATIVE=$(FUZZ_NATIVE) $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# Everything, including the slow guest suites left out of CI.
test-all: build fuzz-build deployed libvirt-deps
	FASTVFS_BIN=$(FASTVFS_BIN) FASTVFS_FUZZ_NATIVE=$(FUZZ_NATIVE) $(PY) -m pytest $(PYTEST_ARGS)

# The main job: serve a directory to a real Linux guest and show it working.
demo: build
	$(PY) -m fastvfs_testing.demo $(DEMO_ARGS)

# Microbenchmarks against the reference virtiofsd in the same run (reports/micro/).
micro: build
	$(PY) -m bench.micro $(MICRO_ARGS)

# Every opcode a Linux guest sends, fastvfs against the reference virtiofsd in the same run
# (reports/ops/; OPS_ARGS="--seconds 1 --rounds 2" is the default length).
ops-bench: build
	$(PY) -m bench.ops $(OPS_ARGS)

# The same microbenchmarks under pytest-benchmark (JSON in reports/micro/).
micro-pytest: build $(VENV)/.bench
	mkdir -p reports/micro
	$(PY) -m pytest bench/test_micro.py -p no:cacheprovider --benchmark-columns=mean,median,ops \
	    --benchmark-json=reports/micro/pytest-benchmark.json $(MICRO_PYTEST_ARGS)

$(VENV)/.bench: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $@

# The bench suite: real guests on fastvfs, the reference virtiofsd, virtio-9p and the host,
# plots and a report in reports/<date>/ (BENCH_ARGS=--quick for the ten-minute version).
bench: build $(VENV)/.bench
	$(PY) -m bench.suite $(BENCH_ARGS)

# The CI performance gate: microbenchmarks against the stored baseline (bench/baseline.json),
# the reference measured in the same run; the run is added to reports/history/.
perf-gate: build
	$(PY) -m bench.regress $(PERF_ARGS)

clean:
	rm -rf build dist $(VENV) $(DEPLOYED) fastvfs_testing/*.so fastvfs_testing/*.c fastvfs/*.so fastvfs/*/*.so fastvfs/*.c fastvfs/*/*.c *.egg-info
