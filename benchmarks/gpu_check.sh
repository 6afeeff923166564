#!/usr/bin/env bash
# benchmarks/gpu_check.sh (make gpu-check): biodali's GPU check, made to run on a GPU machine in
# one call of at most 8 minutes, with no network and no DALI needed. Every step has a time limit
# taken from one budget; a missing piece skips what needs it and is recorded, never fatal.
#
#   1. machine: GPU name, compute capability, driver, nvcc, torch.
#   2. build the DALI-free kernel library for the GPU found (sm_90 on H100/H200; no GPU: sm_90
#      or $BIODALI_CUDA_ARCH): python/biodali/_kernels.py build. If that fails, a prebuilt one
#      carried in .gpu-stage/kernels/ is used (benchmarks/gpu_stage_plugin.sh makes it).
#   3. no GPU: the CPU side of tests/gpu runs, the rest is recorded as skipped; exit 0.
#   4. tests/gpu (every CUDA kernel against its CPU twin), then kernel timings (device time per
#      batch of 4096 10x-like cells, CUDA events after warm-up) and pageable vs pinned H2D copies.
#   5. DALI: if importable, or staged wheels are found ($GPU_STAGE, default /opt/gpu-stage, as
#      ../shared/tools/offline-gpu/ leaves them), install them offline; the plugin comes from
#      .gpu-stage/plugin/ (prebuilt here, carried) or is built if its -dev headers are there.
#      Then `pytest -m gpu` on the DALI tests (pipelines, ExpressionLoader(device="cuda")) and
#      the pipeline timings (reader -> .gpu() -> normalize_densify vs the CPU pipeline).
#   6. $OUT/gpu_check.json: steps (ok / failed / timeout / skipped + why), pass counts, figures,
#      the issue's targets. Also $OUT/gpu_check.log (everything), pytest_kernels.xml,
#      pytest_dali.xml, kernel_timing.json, h2d_timing.json, pipeline_timing.json (7 files).
#
# Knobs: OUT (default ./gpu-check-out), PYTHON (python3), GPU_CHECK_BUDGET_S (450),
# GPU_STAGE (/opt/gpu-stage), BIODALI_CUDA_ARCH (e.g. 90), PIPELINE_CELLS (32768),
# GPU_CHECK_ASSUME_GPU=1 (dry run of every step on a machine without a GPU).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
OUT=${OUT:-$ROOT/gpu-check-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-450}
STAGE=${GPU_STAGE:-/opt/gpu-stage}
LOCAL_STAGE=$ROOT/.gpu-stage
LOG=$OUT/gpu_check.log
STEPS=$(mktemp /tmp/gpu-check-steps.XXXXXX)
START=$(date +%s)
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
: >"$LOG"

say() { echo "[gpu-check $(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }
record() {  # record NAME STATUS SECONDS NOTE
  "$PY" - "$STEPS" "$@" <<'EOF'
import json, sys
path, name, status, seconds, note = sys.argv[1:6]
with open(path, "a") as f:
    f.write(json.dumps({"step": name, "status": status, "seconds": int(seconds), "note": note}) + "\n")
EOF
}
# step NAME MAX_SECONDS CMD...: runs CMD under the smaller of MAX_SECONDS and the budget left.
step() {
  local name=$1 max=$2; shift 2
  local left=$(( START + BUDGET - $(date +%s) - 20 ))
  local limit=$(( max < left ? max : left ))
  if (( limit < 10 )); then
    say "$name: skipped (budget spent)"; record "$name" skipped 0 "budget of ${BUDGET}s spent"; return 99
  fi
  say "=== $name (limit ${limit}s): $*"
  local s rc
  s=$(date +%s)
  timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  local took=$(( $(date +%s) - s )) status=ok
  if (( rc == 124 || rc == 137 )); then status=timeout; elif (( rc != 0 )); then status=failed; fi
  say "$name: $status (rc $rc, ${took}s)"
  record "$name" "$status" "$took" "rc=$rc"
  return "$rc"
}
skip() { say "$1: skipped ($2)"; record "$1" skipped 0 "$2"; }

# --- 1. machine -------------------------------------------------------------------------------
HAVE_GPU=0
GPU_ARCH=""
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >>"$LOG" 2>&1; then
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv | tee -a "$LOG"
  GPU_ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
  [ -n "$GPU_ARCH" ] && HAVE_GPU=1
fi
if (( ! HAVE_GPU )) && "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  HAVE_GPU=1
  GPU_ARCH=$("$PY" -c 'import torch; print("%d%d" % torch.cuda.get_device_capability(0))')
fi
ARCH=${BIODALI_CUDA_ARCH:-${GPU_ARCH:-90}}
if [ "${GPU_CHECK_ASSUME_GPU:-0}" = 1 ] && (( ! HAVE_GPU )); then
  # Dry run on a CPU machine: take every path a GPU machine takes; the GPU parts skip themselves.
  HAVE_GPU=1; say "GPU_CHECK_ASSUME_GPU=1: no GPU, but running every step (dry run)"
fi
{ command -v nvcc && nvcc --version | tail -2; "$PY" --version
  "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'; nproc; } 2>&1 | tee -a "$LOG"
say "GPU found: $HAVE_GPU (arch ${GPU_ARCH:-none}); building kernels for sm_$ARCH"

# --- 2. kernel library --------------------------------------------------------------------------
KDIR=$ROOT/build/kernels-gpu-check
KLIB=$KDIR/libbiodali_kernels.so
if ! step build_kernels 240 "$PY" python/biodali/_kernels.py build --out "$KDIR" --arch "$ARCH"; then
  if [ -f "$LOCAL_STAGE/kernels/libbiodali_kernels.so" ]; then
    KLIB=$LOCAL_STAGE/kernels/libbiodali_kernels.so
    say "using the prebuilt kernel library $KLIB"; record kernels_prebuilt ok 0 "$KLIB"
  else
    KLIB=""
  fi
fi
export BIODALI_KERNELS_LIB=$KLIB

# --- 3./4. kernel tests and timings -------------------------------------------------------------
PYTEST_COMMON=(-q -rs -p no:cacheprovider)
if [ -z "$KLIB" ]; then
  skip kernel_tests "no kernel library"
elif (( ! HAVE_GPU )); then
  step kernel_tests_cpu_side 180 "$PY" -m pytest tests/gpu "${PYTEST_COMMON[@]}" --junitxml="$OUT/pytest_kernels.xml"
  skip kernel_timing "no GPU"
else
  step kernel_tests 180 "$PY" -m pytest tests/gpu "${PYTEST_COMMON[@]}" --junitxml="$OUT/pytest_kernels.xml"
  step kernel_timing 100 "$PY" benchmarks/gpu_timing.py kernels --lib "$KLIB" --out "$OUT/kernel_timing.json"
fi
if (( HAVE_GPU )); then
  step h2d_timing 60 "$PY" benchmarks/gpu_timing.py h2d --out "$OUT/h2d_timing.json"
else
  skip h2d_timing "no GPU"
fi

# --- 5. DALI, the plugin, the DALI GPU tests and the pipeline timings --------------------------
HAVE_DALI=0
if (( ! HAVE_GPU )); then
  skip dali "no GPU"
elif "$PY" -c 'import nvidia.dali' 2>/dev/null; then
  HAVE_DALI=1; record dali_install ok 0 "already installed"
else
  parts=$(ls "$STAGE"/wheels.tar.part-* 2>/dev/null | sort)
  if [ -z "$parts" ]; then
    skip dali_install "no staged DALI wheels in $STAGE (see ../shared/tools/offline-gpu/README.md)"
  else
    step dali_install 180 bash -c 'cat "$0"/wheels.tar.part-* | tar -x -C "$0" &&
      "$1" -m pip install -q --no-index --find-links "$0/wheels" nvidia-dali-cuda130 anndata zarr' "$STAGE" "$PY" &&
      HAVE_DALI=1
  fi
fi

HAVE_PLUGIN=0
if (( HAVE_DALI )); then
  if [ -f "$LOCAL_STAGE/plugin/libbiodali.so" ]; then
    cp "$LOCAL_STAGE/plugin/libbiodali.so" "$LOCAL_STAGE/plugin/_build_info.json" python/biodali/
    # Carried shared libraries the image lacks (libblosc, libsnappy, ...), and only those.
    mkdir -p /tmp/biodali-libs
    for lib in "$LOCAL_STAGE"/plugin/lib/*; do
      [ -e "$lib" ] || continue
      ldconfig -p | grep -q "$(basename "$lib")" || ln -sf "$lib" /tmp/biodali-libs/
    done
    export LD_LIBRARY_PATH=/tmp/biodali-libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    say "plugin: prebuilt from .gpu-stage/plugin ($(ls /tmp/biodali-libs | tr '\n' ' '))"
  elif [ -f /usr/include/blosc.h ] && [ -f /usr/include/lz4.h ] && [ -f /usr/include/zstd.h ] &&
       [ -d /usr/include/nlohmann ]; then
    step build_plugin 240 "$PY" setup.py -q build_plugin -j "$(nproc)"
  else
    skip build_plugin "no prebuilt plugin in .gpu-stage/plugin and no blosc/lz4/zstd/nlohmann headers to build one"
  fi
  if PYTHONPATH=$ROOT/python "$PY" -c 'import biodali' >>"$LOG" 2>&1; then
    HAVE_PLUGIN=1; record plugin_load ok 0 ""
  else
    tail -5 "$LOG"; record plugin_load failed 0 "import biodali failed (see the log)"
  fi
fi
if (( HAVE_PLUGIN )); then
  export PYTHONPATH=$ROOT/python${PYTHONPATH:+:$PYTHONPATH}
  step dali_gpu_tests 200 "$PY" -m pytest -m gpu tests --ignore=tests/gpu "${PYTEST_COMMON[@]}" \
    --junitxml="$OUT/pytest_dali.xml"
  step pipeline_timing 150 "$PY" benchmarks/gpu_timing.py pipeline --cells "${PIPELINE_CELLS:-32768}" \
    --out "$OUT/pipeline_timing.json"
elif (( HAVE_GPU )); then
  skip dali_gpu_tests "DALI or the plugin is missing"
  skip pipeline_timing "DALI or the plugin is missing"
fi

# --- 6. summary -------------------------------------------------------------------------------------
"$PY" - "$OUT" "$STEPS" "$HAVE_GPU" "$ARCH" "$(( $(date +%s) - START ))" <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys, subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

out, steps_file, have_gpu, arch, seconds = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1", sys.argv[4], int(sys.argv[5])
steps = [json.loads(l) for l in open(steps_file) if l.strip()]

def load(name):
    p = out / name
    return json.loads(p.read_text()) if p.exists() else None

def junit(name):
    p = out / name
    if not p.exists():
        return None
    root = ET.parse(p).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    n["passed"] = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    n["failed_names"] = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
                         if c.find("failure") is not None or c.find("error") is not None][:30]
    return n

def smi():
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap,driver_version,memory.total",
                               "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:
        return None

kernel, h2d, pipe = load("kernel_timing.json"), load("h2d_timing.json"), load("pipeline_timing.json")
summary = {"gpu": smi() if have_gpu else None, "arch_built": f"sm_{arch}", "seconds": seconds,
           "steps": steps, "pytest_kernels": junit("pytest_kernels.xml"), "pytest_dali": junit("pytest_dali.xml"),
           "kernel_timing": kernel, "h2d_timing": h2d, "pipeline_timing": pipe, "targets": {}}
t = summary["targets"]
try:
    dev_ms = kernel["ops"]["normalize_densify_2000_f32"]["median_ms"]
    t["normalize_densify_device_ms_per_batch"] = dev_ms
    reader_ms = pipe["reader_cpu"]["ms_per_batch"]
    t["reader_ms_per_batch"] = reader_ms
    t["transforms_share_of_reader"] = round(dev_ms / reader_ms, 4)
    t["transforms_le_10pct_of_reader"] = dev_ms <= 0.1 * reader_ms
except (TypeError, KeyError):
    pass
try:
    gpu, cpu = pipe["normalize_densify_gpu"]["cells_per_s"], pipe["normalize_densify_cpu"]["cells_per_s"]
    t.update(gpu_pipeline_cells_per_s=gpu, cpu_pipeline_cells_per_s=cpu, gpu_pipeline_faster=gpu > cpu)
except (TypeError, KeyError):
    pass
if kernel and "ops" in kernel:
    t["kernels_matching_twins"] = sorted(n for n, e in kernel["ops"].items()
                                         if e.get("check") and all(c.get("matches_twin") for c in e["check"]))
    t["kernels_not_matching"] = sorted(n for n, e in kernel["ops"].items()
                                       if not (e.get("check") and all(c.get("matches_twin") for c in e["check"])))
(out / "gpu_check.json").write_text(json.dumps(summary, indent=1))
print("\n===== gpu-check summary =====")
print("GPU:", summary["gpu"] or "none", "| built for", summary["arch_built"], "|", seconds, "s")
for s in steps:
    print(f"  {s['step']:24s} {s['status']:8s} {s['seconds']:4d}s  {s['note']}")
for name in ("pytest_kernels", "pytest_dali"):
    n = summary[name]
    if n:
        print(f"  {name}: {n['passed']} passed, {n['failures'] + n['errors']} failed, {n['skipped']} skipped")
if kernel and "ops" in kernel:
    for name, e in kernel["ops"].items():
        print(f"  {name:30s} {e.get('median_ms', e.get('error', '-'))} ms/batch")
print("  targets:", json.dumps(t))
EOF
rm -f "$STEPS"
# Exit status: 1 if a step that ran failed or timed out, else 0 (skipped pieces are not failures).
if [ -f "$OUT/gpu_check.json" ] && "$PY" -c '
import json, sys
s = json.load(open(sys.argv[1]))
sys.exit(1 if any(x["status"] in ("failed", "timeout") for x in s["steps"]) else 0)' "$OUT/gpu_check.json"; then
  exit 0
fi
exit 1
