#!/usr/bin/env bash
# benchmarks/gpu_stage_plugin.sh: prepares what the GPU check (benchmarks/gpu_check.sh) cannot
# build on a GPU machine without -dev packages or network, into .gpu-stage/ (ignored by git):
#   .gpu-stage/plugin/   libbiodali.so + _build_info.json as built here (`make build`: DALI's
#                        version of .venv, sm_80/sm_90 kernels) and, in lib/, the shared
#                        libraries it needs beyond glibc/libstdc++ (blosc, snappy, lz4, zstd);
#                        gpu_check.sh links in only those the machine lacks.
#   .gpu-stage/kernels/  a prebuilt DALI-free libbiodali_kernels.so (sm_90), used only if the
#                        build there fails.
# Together ~15 MB: carry [".gpu-stage/plugin", ".gpu-stage/kernels"] in the call that runs the
# check (the DALI wheels themselves come from ../shared/tools/offline-gpu/stage.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
dst=.gpu-stage
[ -f python/biodali/libbiodali.so ] || { echo "build the plugin first: make build" >&2; exit 1; }
rm -rf "$dst/plugin" "$dst/kernels"
mkdir -p "$dst/plugin/lib" "$dst/kernels"
cp python/biodali/libbiodali.so python/biodali/_build_info.json "$dst/plugin/"
# The plugin's and libblosc's own dependencies outside glibc, libstdc++, CUDA and DALI.
for f in python/biodali/libbiodali.so $(ldd python/biodali/libbiodali.so | awk '/libblosc/ {print $3}'); do
  ldd "$f" | awk '/=> \// {print $3}'
done | sort -u | grep -E '/lib(blosc|snappy|lz4|zstd)\.so' | while read -r lib; do
  cp -L "$lib" "$dst/plugin/lib/"
done
"$PY" python/biodali/_kernels.py build --out "$dst/kernels" --arch "${BIODALI_CUDA_ARCH:-90}" >/dev/null
rm -rf "$dst/kernels/obj"
du -sh "$dst/plugin" "$dst/kernels"
ls "$dst/plugin/lib"
