# The two commands of the README: `make demo` (main job) and `make test`. Both set up a fresh
# machine: Debian -dev packages, .venv with pinned packages, the plugin build.
PY := .venv/bin/python
APT_PACKAGES := libblosc-dev liblz4-dev libzstd-dev zlib1g-dev nlohmann-json3-dev
JOBS ?= $(shell nproc)

.PHONY: all deps venv build demo test sanitize clean gpu-check

all: build

deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

.venv/.installed: requirements.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

venv: deps .venv/.installed

build: venv
	$(PY) setup.py -q build_plugin -j $(JOBS)

# Trains a cell-type classifier fed by biodali (the first run also writes the synthetic data).
demo: build
	$(PY) examples/train_cell_type.py

test: build
	$(PY) -m pytest tests -q -ra

clean:
	rm -rf build python/biodali/libbiodali.so python/biodali/_build_info.json

# ASan + UBSan build of the plugin, the reader tests run against it, then the release build back.
# Python and DALI are not instrumented, so libasan is preloaded; leak checking is off because
# the interpreter itself never frees everything at exit.
SAN_FLAGS := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
sanitize: venv
	BIODALI_BUILD_FLAVOR=asan BIODALI_CXXFLAGS="$(SAN_FLAGS)" $(PY) setup.py -q build_plugin -j $(JOBS)
	LD_PRELOAD="$$(g++ -print-file-name=libasan.so) $$(g++ -print-file-name=libubsan.so)" \
	  ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  $(PY) -m pytest tests -q -x -p no:warnings; status=$$?; \
	$(PY) setup.py -q build_plugin -j $(JOBS); exit $$status

# The GPU check in one call on a GPU machine (no network, no DALI needed; see benchmarks/README.md
# "GPU check"): kernel build for the GPU found, every CUDA kernel against its CPU twin, timings,
# and with staged DALI wheels the DALI GPU tests and pipelines. Logs and gpu_check.json go to $OUT.
# Without a GPU it builds the kernels (sm_90), runs the CPU side and exits 0.
gpu-check:
	PYTHON=$${PYTHON:-$$( [ -x $(PY) ] && echo $(PY) || echo python3 )} benchmarks/gpu_check.sh
