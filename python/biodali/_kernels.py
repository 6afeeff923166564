"""ctypes bindings for biodali's kernel C API (csrc/capi/kernels_api.h): the expression CUDA
kernels on raw device pointers and their CPU twins on host arrays, without DALI.

This module is self-contained (numpy, plus torch for device memory): it imports nothing from
biodali, so it also loads by file path where DALI is not installed, e.g. on a GPU machine::

    python3 python/biodali/_kernels.py build      # builds build/kernels/libbiodali_kernels.so
    python3 python/biodali/_kernels.py info       # which library, CUDA or not, devices seen

Library: $BIODALI_KERNELS_LIB if set; else the DALI-free build/kernels/libbiodali_kernels.so
when it is newer than its sources; else the plugin (python/biodali/libbiodali.so), which holds
the same C API (setup.py compiles every csrc/ source into it).

Batches are CSR in host memory (:class:`Csr`). ``cpu_*`` run the twins; ``gpu_*`` upload the
batch, launch the kernel, synchronize and return numpy arrays; :class:`DeviceCsr` and the
``prepare_*`` functions keep everything on the device and give a launch-only callable for timing.
"""
from __future__ import annotations

import concurrent.futures
import ctypes
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
ROOT = _HERE.parent.parent  # the source tree (csrc/ lives there)
DEFAULT_BUILD_DIR = ROOT / "build" / "kernels"
LIB_NAME = "libbiodali_kernels.so"
PLUGIN_LIB = _HERE / "libbiodali.so"

# Sources of the DALI-free library. Image and genome kernels add their .cc twins and .cu files
# (and their C API files) here when they land.
CPU_SOURCES = ["csrc/common/dtype.cc", "csrc/expression/transforms_cpu.cc", "csrc/capi/kernels_api.cc"]
CUDA_SOURCES = ["csrc/expression/transforms_gpu.cu", "csrc/capi/kernels_api_gpu.cu"]
HEADER_DIRS = ["csrc/common", "csrc/expression", "csrc/capi"]

VALUE_DTYPES = ["float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                "uint64"]
DENSE_NUMPY = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}  # bfloat16: bits
DOWNSAMPLE_STREAM, MASK_STREAM = 1, 2  # the random streams the DALI operators use

_ERR_CAP = 4096


# ------------------------------------------------------------------------------------------------
# Building the DALI-free library


def _find_nvcc() -> str | None:
    for cand in (os.environ.get("NVCC"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and Path(cand).exists():
            return cand
    return None


def detect_archs() -> list[str]:
    """Compute capabilities to build for: $BIODALI_CUDA_ARCH ("90" or "80;90"), else the GPUs
    nvidia-smi (or torch) reports, else 80 and 90 (what the plugin builds)."""
    env = os.environ.get("BIODALI_CUDA_ARCH")
    if env:
        return [a.strip().replace(".", "") for a in env.replace(",", ";").split(";") if a.strip()]
    found: list[str] = []
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30).stdout
            found = [line.strip().replace(".", "") for line in out.splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError):
            found = []
    if not found:
        try:
            import torch

            if torch.cuda.is_available():
                found = ["%d%d" % torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]
        except Exception:  # no torch or no driver
            found = []
    return sorted(set(found)) or ["80", "90"]


def _cuda_lib_dir(nvcc: str) -> Path | None:
    home = Path(os.environ.get("CUDA_HOME", Path(nvcc).resolve().parent.parent))
    for d in (home / "lib64", home / "lib", home / "targets" / "x86_64-linux" / "lib",
              Path("/usr/local/cuda/lib64")):
        if (d / "libcudart_static.a").exists() or (d / "libcudart.so").exists():
            return d
    return None


def _stale(lib: Path, sources: list[str]) -> bool:
    if not lib.exists():
        return True
    newest = max((p.stat().st_mtime for d in HEADER_DIRS for p in (ROOT / d).glob("*.h")), default=0.0)
    newest = max([newest] + [(ROOT / s).stat().st_mtime for s in sources if (ROOT / s).exists()])
    return lib.stat().st_mtime < newest


def build(out_dir: Path | str = DEFAULT_BUILD_DIR, cuda: bool | None = None, archs: list[str] | None = None,
          jobs: int | None = None, verbose: bool = True) -> dict:
    """Compiles libbiodali_kernels.so (CPU twins, and the CUDA kernels when nvcc is found and
    `cuda` is not False) without DALI. Returns what was built (also written to build_info.json)."""
    out_dir = Path(out_dir)
    if not (ROOT / "csrc").is_dir():
        raise RuntimeError(f"building the kernels needs the source tree ({ROOT / 'csrc'} is missing)")
    nvcc = _find_nvcc()
    if cuda and not nvcc:
        raise RuntimeError("cuda=True but nvcc was not found (PATH, $NVCC, /usr/local/cuda/bin)")
    use_cuda = bool(nvcc) if cuda is None else bool(cuda)
    archs = (archs or detect_archs()) if use_cuda else []
    obj_dir = out_dir / "obj"
    obj_dir.mkdir(parents=True, exist_ok=True)
    cxx = os.environ.get("CXX", "g++")
    opt = os.environ.get("BIODALI_CXXFLAGS", "-O3 -DNDEBUG").split()
    includes = [f"-I{ROOT / 'csrc'}", f"-I{ROOT}"]
    # As setup.py: no fused multiply-add on either side, so twins and kernels round alike.
    cxx_flags = (["-std=c++20", "-fPIC", "-Wall", "-Wextra", "-fvisibility=hidden", "-ffp-contract=off",
                  "-fopenmp-simd"] + opt + includes)
    gencode: list[str] = []
    for i, a in enumerate(archs):
        code = f"[sm_{a},compute_{a}]" if i == len(archs) - 1 else f"sm_{a}"
        gencode += ["-gencode", f"arch=compute_{a},code={code}"]
    nvcc_flags = (["-std=c++20", "-O3", "-fmad=false", "--expt-relaxed-constexpr",
                   "-Xcompiler", "-fPIC,-Wall,-Wextra,-fvisibility=hidden"] + gencode + includes)

    def compile_one(src: str):
        obj = obj_dir / (src.replace("/", "__") + f"{'.' + '_'.join(archs) if src.endswith('.cu') else ''}.o")
        cmd = ([nvcc] + nvcc_flags if src.endswith(".cu") else [cxx] + cxx_flags) + ["-c", str(ROOT / src), "-o", str(obj)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            return obj, time.perf_counter() - t0, f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}"
        return obj, time.perf_counter() - t0, None

    sources = CPU_SOURCES + (CUDA_SOURCES if use_cuda else [])
    t0 = time.perf_counter()
    # The CUDA sources take longest: start them first.
    order = sorted(sources, key=lambda s: not s.endswith(".cu"))
    with concurrent.futures.ThreadPoolExecutor(jobs or os.cpu_count() or 2) as pool:
        results = dict(zip(order, pool.map(compile_one, order)))
    errors = [err for _, _, err in results.values() if err]
    if errors:
        raise RuntimeError("biodali kernels: compilation failed\n" + "\n".join(errors))
    lib = out_dir / LIB_NAME
    link = [cxx, "-shared", "-o", str(lib)] + [str(results[s][0]) for s in sources] + opt
    link += ["-lmvec", "-lm", "-lpthread"]
    if use_cuda:
        cuda_lib = _cuda_lib_dir(nvcc)
        if cuda_lib is None:
            raise RuntimeError("no libcudart found next to nvcc (set CUDA_HOME)")
        if (cuda_lib / "libcudart_static.a").exists():
            link += [f"-L{cuda_lib}", "-lcudart_static", "-ldl", "-lrt"]
        else:
            link += [f"-L{cuda_lib}", "-lcudart", f"-Wl,-rpath,{cuda_lib}"]
    subprocess.run(link, check=True)
    info = {
        "library": str(lib), "cuda": use_cuda, "archs": archs, "nvcc": nvcc,
        "seconds": round(time.perf_counter() - t0, 1),
        "compile_seconds": {s: round(results[s][1], 1) for s in sources},
    }
    (out_dir / "build_info.json").write_text(json.dumps(info, indent=1))
    if verbose:
        print(f"biodali kernels: built {lib} ({'CUDA ' + ','.join('sm_' + a for a in archs) if use_cuda else 'CPU only'}) "
              f"in {info['seconds']} s", file=sys.stderr)
    return info


# ------------------------------------------------------------------------------------------------
# Loading


def default_library() -> Path:
    env = os.environ.get("BIODALI_KERNELS_LIB")
    if env:
        return Path(env)
    built = DEFAULT_BUILD_DIR / LIB_NAME
    if built.exists() and not _stale(built, CPU_SOURCES + CUDA_SOURCES):
        return built
    if PLUGIN_LIB.exists():
        return PLUGIN_LIB
    return built


_lib_cache: dict[str, "Kernels"] = {}


def load(path: Path | str | None = None) -> "Kernels":
    path = Path(path) if path else default_library()
    key = str(path.resolve()) if path.exists() else str(path)
    if key not in _lib_cache:
        if not path.exists():
            raise OSError(f"{path} is missing: build it (python3 {Path(__file__)} build) or the plugin (make build)")
        if path.resolve() == PLUGIN_LIB.resolve():
            # The plugin links DALI's libraries; load them the way DALI does.
            import nvidia.dali  # noqa: F401
        _lib_cache[key] = Kernels(ctypes.CDLL(str(path)), path)
    return _lib_cache[key]


# ------------------------------------------------------------------------------------------------
# Batches


@dataclass
class Csr:
    """A batch of sparse rows in host memory: row r is values[offsets[r]:offsets[r+1]] at columns
    indices[...] (int32; None for value-only operators)."""

    values: np.ndarray
    indices: np.ndarray | None
    offsets: np.ndarray

    def __post_init__(self):
        self.values = np.ascontiguousarray(self.values)
        self.offsets = np.ascontiguousarray(self.offsets, dtype=np.int64)
        if self.indices is not None:
            self.indices = np.ascontiguousarray(self.indices, dtype=np.int32)
            if len(self.indices) != len(self.values):
                raise ValueError("values and indices differ in length")
        if self.offsets.ndim != 1 or len(self.offsets) < 1 or self.offsets[-1] != len(self.values):
            raise ValueError("offsets must be [num_rows + 1] ending at len(values)")

    @classmethod
    def from_rows(cls, values: list, indices: list | None = None, dtype=None) -> "Csr":
        lengths = [len(v) for v in values]
        offsets = np.zeros(len(values) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        dt = np.dtype(dtype) if dtype is not None else (np.asarray(values[0]).dtype if values else np.float32)
        v = np.concatenate([np.asarray(x, dt) for x in values]) if values else np.zeros(0, dt)
        i = None
        if indices is not None:
            i = np.concatenate([np.asarray(x, np.int32) for x in indices]) if indices else np.zeros(0, np.int32)
        return cls(v, i, offsets)

    @property
    def num_rows(self) -> int:
        return len(self.offsets) - 1

    @property
    def nnz(self) -> int:
        return int(self.offsets[-1])

    @property
    def dtype(self) -> str:
        return self.values.dtype.name

    def astype(self, dtype) -> "Csr":
        return Csr(self.values.astype(dtype), self.indices, self.offsets)

    def rows(self, array: np.ndarray) -> list[np.ndarray]:
        """A per-element array (same length as values) split by row."""
        return [array[self.offsets[r]:self.offsets[r + 1]] for r in range(self.num_rows)]


_S, _VP, _I, _I32, _I64, _U32, _U64, _D = (ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int32,
                                          ctypes.c_int64, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_double)
_ERR_ARGS = [_S, ctypes.c_size_t]
# Arguments of every C API function before (err, err_cap), as in kernels_api.cc / kernels_api_gpu.cu.
_SIGNATURES = {
    "biodali_kcpu_normalize": [_S, _VP, _VP, _I, _D, _I, _VP],
    "biodali_kcpu_gene_table": [_VP, _I64, _VP, _I64, ctypes.POINTER(_I64)],
    "biodali_kcpu_select_genes": [_S, _VP, _VP, _VP, _I, _VP, _I64, _VP, _VP, _VP, _VP],
    "biodali_kcpu_densify": [_S, _VP, _VP, _VP, _I, _I64, _VP, _I64, _S, _I, _D, _I, _VP],
    "biodali_kcpu_downsample": [_S, _VP, _VP, _I, _VP, _VP, _I64, _U64, _U32, _VP],
    "biodali_kcpu_mask": [_S, _VP, _VP, _VP, _I, _VP, _I64, _U64, _U32, _VP],
    "biodali_kcpu_rank_tokens": [_S, _VP, _VP, _VP, _I, _VP, _I64, _I64, _I32, _I32, _VP, _VP],
    "biodali_kcpu_bin_values": [_S, _VP, _VP, _I, _I, _VP],
    "biodali_kgpu_device_count": [],
    "biodali_kgpu_synchronize": [_VP],
    # (dtype, value pointers[, index pointers], offsets, num_rows, total_nnz, ..., stream)
    "biodali_kgpu_normalize": [_S, _VP, _VP, _I, _I64, _D, _I, _VP, _VP, _VP],
    "biodali_kgpu_gather_selected": [_S, _VP, _VP, _I, _I64, _VP, _VP, _VP, _VP, _VP, _VP],
    "biodali_kgpu_densify": [_S, _VP, _VP, _VP, _I, _I64, _I64, _VP, _I64, _I64, _S, _I, _D, _I, _VP, _VP, _VP],
    "biodali_kgpu_downsample": [_S, _VP, _VP, _I, _I64, _VP, _VP, _I64, _U64, _U32, _VP, _VP, _VP],
    "biodali_kgpu_mask": [_S, _VP, _VP, _VP, _I, _I64, _VP, _I64, _U64, _U32, _VP, _VP],
    "biodali_kgpu_rank_tokens": [_S, _VP, _VP, _VP, _I, _I64, _VP, _I64, _I64, _I32, _I32, _VP, _VP, _VP, _VP],
    "biodali_kgpu_bin_values": [_S, _VP, _VP, _I, _I64, _I, _VP, _VP, _VP],
}


def _ptr(a: np.ndarray | None):
    return None if a is None else a.ctypes.data_as(ctypes.c_void_p)


def _per_row(x, n: int, dtype=np.float32) -> np.ndarray:
    a = np.asarray(x, dtype)
    return np.ascontiguousarray(np.broadcast_to(a, (n,)) if a.ndim == 0 else a)


class Kernels:
    """The C API of one loaded library."""

    def __init__(self, lib: ctypes.CDLL, path: Path):
        self.lib, self.path = lib, path
        self.has_cuda = hasattr(lib, "biodali_kgpu_normalize")
        for name, args in _SIGNATURES.items():
            if name.startswith("biodali_kgpu_") and not self.has_cuda:
                continue
            fn = getattr(lib, name)
            fn.restype = ctypes.c_int
            fn.argtypes = args + ([] if name == "biodali_kgpu_device_count" else _ERR_ARGS)

    def device_count(self) -> int:
        return int(self.lib.biodali_kgpu_device_count()) if self.has_cuda else 0

    def call(self, name: str, *args) -> None:
        err = ctypes.create_string_buffer(_ERR_CAP)
        if getattr(self.lib, name)(*args, err, ctypes.c_size_t(_ERR_CAP)) != 0:
            raise RuntimeError(err.value.decode("utf-8", "replace"))

    # -------------------------------------------------------------------------------- CPU twins

    def cpu_normalize(self, csr: Csr, target_sum: float = 1e4, log1p: bool = True) -> np.ndarray:
        out = np.empty(csr.nnz, np.float32)
        self.call("biodali_kcpu_normalize", csr.dtype.encode(), _ptr(csr.values), _ptr(csr.offsets),
                  ctypes.c_int(csr.num_rows), ctypes.c_double(target_sum), ctypes.c_int(int(log1p)), _ptr(out))
        return out

    def gene_table(self, genes) -> np.ndarray:
        g = np.ascontiguousarray(genes, np.int64)
        size = ctypes.c_int64(0)
        self.call("biodali_kcpu_gene_table", _ptr(g), ctypes.c_int64(len(g)), None, ctypes.c_int64(0),
                  ctypes.byref(size))
        table = np.empty(size.value, np.int32)
        self.call("biodali_kcpu_gene_table", _ptr(g), ctypes.c_int64(len(g)), _ptr(table),
                  ctypes.c_int64(len(table)), ctypes.byref(size))
        return table

    def cpu_select_genes(self, csr: Csr, genes):
        """(out_offsets, source elements, positions, values): the kept entries of every row."""
        g = np.ascontiguousarray(genes, np.int64)
        out_offsets = np.zeros(csr.num_rows + 1, np.int64)
        elements = np.empty(csr.nnz, np.int32)
        positions = np.empty(csr.nnz, np.int32)
        values = np.empty(csr.nnz, csr.values.dtype)
        self.call("biodali_kcpu_select_genes", csr.dtype.encode(), _ptr(csr.values), _ptr(csr.indices),
                  _ptr(csr.offsets), ctypes.c_int(csr.num_rows), _ptr(g), ctypes.c_int64(len(g)), _ptr(out_offsets),
                  _ptr(elements), _ptr(positions), _ptr(values))
        n = int(out_offsets[-1])
        return out_offsets, elements[:n].copy(), positions[:n].copy(), values[:n].copy()

    def cpu_densify(self, csr: Csr, n_features: int, genes=None, dtype: str = "float32", normalize: bool = False,
                    target_sum: float = 1e4, log1p: bool = True) -> np.ndarray:
        g = None if genes is None else np.ascontiguousarray(genes, np.int64)
        length = len(g) if g is not None else n_features
        out = np.empty((csr.num_rows, length), DENSE_NUMPY[dtype])
        self.call("biodali_kcpu_densify", csr.dtype.encode(), _ptr(csr.values), _ptr(csr.indices),
                  _ptr(csr.offsets), ctypes.c_int(csr.num_rows), ctypes.c_int64(n_features), _ptr(g),
                  ctypes.c_int64(0 if g is None else len(g)), dtype.encode(), ctypes.c_int(int(normalize)),
                  ctypes.c_double(target_sum), ctypes.c_int(int(log1p)), _ptr(out))
        return out

    def cpu_downsample(self, csr: Csr, fraction=-1.0, target_total=-1.0, seed: int = 0, batch_counter: int = 0,
                       random_stream: int = DOWNSAMPLE_STREAM) -> np.ndarray:
        out = np.empty_like(csr.values)
        f, t = _per_row(fraction, csr.num_rows), _per_row(target_total, csr.num_rows)
        self.call("biodali_kcpu_downsample", csr.dtype.encode(), _ptr(csr.values), _ptr(csr.offsets),
                  ctypes.c_int(csr.num_rows), _ptr(f), _ptr(t), ctypes.c_int64(seed), ctypes.c_uint64(batch_counter),
                  ctypes.c_uint32(random_stream), _ptr(out))
        return out

    def cpu_mask(self, csr: Csr, probability=0.15, seed: int = 0, batch_counter: int = 0, by_column: bool = True,
                 random_stream: int = MASK_STREAM) -> np.ndarray:
        out = np.empty_like(csr.values)
        p = _per_row(probability, csr.num_rows)
        self.call("biodali_kcpu_mask", csr.dtype.encode(), _ptr(csr.values), _ptr(csr.indices) if by_column else None,
                  _ptr(csr.offsets), ctypes.c_int(csr.num_rows), _ptr(p), ctypes.c_int64(seed),
                  ctypes.c_uint64(batch_counter), ctypes.c_uint32(random_stream), _ptr(out))
        return out

    def cpu_rank_tokens(self, csr: Csr, medians, max_length: int = 2048, pad_id: int = 0, token_offset: int = 0):
        m = np.ascontiguousarray(medians, np.float32)
        tokens = np.empty((csr.num_rows, max_length), np.int32)
        lengths = np.empty(csr.num_rows, np.int32)
        self.call("biodali_kcpu_rank_tokens", csr.dtype.encode(), _ptr(csr.values), _ptr(csr.indices),
                  _ptr(csr.offsets), ctypes.c_int(csr.num_rows), _ptr(m), ctypes.c_int64(len(m)),
                  ctypes.c_int64(max_length), ctypes.c_int32(pad_id), ctypes.c_int32(token_offset), _ptr(tokens),
                  _ptr(lengths))
        return tokens, lengths

    def cpu_bin_values(self, csr: Csr, n_bins: int = 51) -> np.ndarray:
        out = np.empty(csr.nnz, np.int32)
        self.call("biodali_kcpu_bin_values", csr.dtype.encode(), _ptr(csr.values), _ptr(csr.offsets),
                  ctypes.c_int(csr.num_rows), ctypes.c_int(n_bins), _ptr(out))
        return out

    # -------------------------------------------------------------------------------- CUDA kernels
    # gpu_* upload, launch, synchronize and return numpy arrays plus the error-flag word
    # (ErrorFlag bits: 1 negative/NaN value, 2 non-integer count, 4 column out of range).

    def gpu_normalize(self, csr: Csr, target_sum: float = 1e4, log1p: bool = True):
        return prepare_normalize(self, DeviceCsr(csr), target_sum, log1p).run_and_fetch()

    def gpu_select_genes(self, csr: Csr, genes):
        """(values, positions) of the GPU gather, with the host selection of cpu_select_genes."""
        return prepare_select_genes(self, DeviceCsr(csr), csr, genes).run_and_fetch()

    def gpu_densify(self, csr: Csr, n_features: int, genes=None, dtype: str = "float32", normalize: bool = False,
                    target_sum: float = 1e4, log1p: bool = True):
        return prepare_densify(self, DeviceCsr(csr), n_features, genes, dtype, normalize, target_sum,
                               log1p).run_and_fetch()

    def gpu_downsample(self, csr: Csr, fraction=-1.0, target_total=-1.0, seed: int = 0, batch_counter: int = 0,
                       random_stream: int = DOWNSAMPLE_STREAM):
        return prepare_downsample(self, DeviceCsr(csr), fraction, target_total, seed, batch_counter,
                                  random_stream).run_and_fetch()

    def gpu_mask(self, csr: Csr, probability=0.15, seed: int = 0, batch_counter: int = 0, by_column: bool = True,
                 random_stream: int = MASK_STREAM):
        return prepare_mask(self, DeviceCsr(csr), probability, seed, batch_counter, by_column,
                            random_stream).run_and_fetch()

    def gpu_rank_tokens(self, csr: Csr, medians, max_length: int = 2048, pad_id: int = 0, token_offset: int = 0):
        return prepare_rank_tokens(self, DeviceCsr(csr), medians, max_length, pad_id, token_offset).run_and_fetch()

    def gpu_bin_values(self, csr: Csr, n_bins: int = 51):
        return prepare_bin_values(self, DeviceCsr(csr), n_bins).run_and_fetch()


# ------------------------------------------------------------------------------------------------
# Device memory (torch: any framework that hands out device pointers would do)


# Host memory in place of device memory (fake_device()): lets a machine without a GPU check how
# the gpu_*/prepare_* calls marshal their arguments; the launches then fail with a CUDA error.
_FAKE_DEVICE = False


class fake_device:
    """Context manager: DeviceBuffer allocates host memory, no torch needed. Only for machines
    without a CUDA device (host pointers handed to a real GPU would fault)."""

    def __enter__(self):
        global _FAKE_DEVICE
        _FAKE_DEVICE = True

    def __exit__(self, *exc):
        global _FAKE_DEVICE
        _FAKE_DEVICE = False


def _torch():
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA device")
    return torch


class DeviceBuffer:
    """Raw device bytes (a torch uint8 tensor; at least 16 bytes so the pointer is never null)."""

    def __init__(self, nbytes: int, zero: bool = False):
        self.nbytes = int(nbytes)
        if _FAKE_DEVICE:
            self.tensor = np.zeros(max(self.nbytes, 16), np.uint8)
            return
        torch = _torch()
        make = torch.zeros if zero else torch.empty
        self.tensor = make(max(self.nbytes, 16), dtype=torch.uint8, device="cuda")

    @classmethod
    def of(cls, array: np.ndarray) -> "DeviceBuffer":
        a = np.ascontiguousarray(array)
        buf = cls(a.nbytes)
        if a.nbytes:
            raw = a.reshape(-1).view(np.uint8)
            if _FAKE_DEVICE:
                buf.tensor[:a.nbytes] = raw
            else:
                buf.tensor[:a.nbytes].copy_(_torch().from_numpy(raw))
        return buf

    @property
    def ptr(self) -> int:
        return int(self.tensor.ctypes.data if _FAKE_DEVICE else self.tensor.data_ptr())

    def fetch(self, dtype, shape) -> np.ndarray:
        dtype = np.dtype(dtype)
        count = int(np.prod(shape)) if len(shape) else 1
        raw = self.tensor[:count * dtype.itemsize]
        raw = raw.copy() if _FAKE_DEVICE else raw.cpu().numpy()
        return raw.view(dtype).reshape(shape)


def _table(base: int, starts: np.ndarray, itemsize: int) -> DeviceBuffer:
    """A device array of per-row pointers base + starts[r] * itemsize."""
    ptrs = np.uint64(base) + np.asarray(starts, np.uint64) * np.uint64(itemsize)
    return DeviceBuffer.of(ptrs.astype(np.uint64))


def _stream_ptr() -> ctypes.c_void_p:
    if _FAKE_DEVICE:
        return ctypes.c_void_p(None)
    return ctypes.c_void_p(_torch().cuda.current_stream().cuda_stream)


def synchronize() -> None:
    if not _FAKE_DEVICE:
        _torch().cuda.synchronize()


class DeviceCsr:
    """A Csr batch on the device with the per-row pointer tables the kernels take."""

    def __init__(self, csr: Csr):
        self.host = csr
        self.num_rows, self.nnz, self.dtype = csr.num_rows, csr.nnz, csr.dtype
        self.itemsize = csr.values.dtype.itemsize
        self.values = DeviceBuffer.of(csr.values)
        self.offsets = DeviceBuffer.of(csr.offsets)
        starts = csr.offsets[:-1]
        self.value_ptrs = _table(self.values.ptr, starts, self.itemsize)
        self.indices = self.index_ptrs = None
        if csr.indices is not None:
            self.indices = DeviceBuffer.of(csr.indices)
            self.index_ptrs = _table(self.indices.ptr, starts, 4)

    def output_like(self, itemsize: int):
        """A device buffer of nnz elements and its per-row pointer table (same layout as values)."""
        buf = DeviceBuffer(self.nnz * itemsize)
        return buf, _table(buf.ptr, self.host.offsets[:-1], itemsize)

    def output_rows(self, row_bytes: int):
        """A device buffer of [num_rows, row_bytes] and its per-row pointer table."""
        buf = DeviceBuffer(self.num_rows * row_bytes)
        return buf, _table(buf.ptr, np.arange(self.num_rows, dtype=np.uint64), row_bytes)


class Launch:
    """A prepared kernel call: launch() only launches (for timing), run_and_fetch() launches,
    synchronizes and returns (*outputs, error_flags)."""

    def __init__(self, kernels: Kernels, name: str, args: list, fetch, keep: list, error_flags: DeviceBuffer | None):
        # `keep` holds every buffer the raw pointers in `args` point into (the DeviceCsr too).
        self.kernels, self.name, self.args, self._fetch, self._keep = kernels, name, args, fetch, keep
        self.error_flags = error_flags

    def launch(self) -> None:
        self.kernels.call(self.name, *self.args, _stream_ptr())

    def errors(self) -> int:
        return int(self.error_flags.fetch(np.int32, (1,))[0]) if self.error_flags is not None else 0

    def run_and_fetch(self):
        self.launch()
        synchronize()
        out = self._fetch()
        return (*out, self.errors()) if isinstance(out, tuple) else (out, self.errors())


def _vp(buf: DeviceBuffer | None):
    return None if buf is None else ctypes.c_void_p(buf.ptr)


def _rows_args(d: DeviceCsr, with_indices: bool) -> list:
    head = [d.dtype.encode(), _vp(d.value_ptrs)]
    if with_indices:
        head.append(_vp(d.index_ptrs))
    return head + [_vp(d.offsets), ctypes.c_int(d.num_rows), ctypes.c_int64(d.nnz)]


def prepare_normalize(k: Kernels, d: DeviceCsr, target_sum: float = 1e4, log1p: bool = True) -> Launch:
    out, out_ptrs = d.output_like(4)
    flags = DeviceBuffer(4, zero=True)
    args = _rows_args(d, False) + [ctypes.c_double(target_sum), ctypes.c_int(int(log1p)), _vp(out_ptrs), _vp(flags)]
    return Launch(k, "biodali_kgpu_normalize", args, lambda: out.fetch(np.float32, (d.nnz,)), [d, out, out_ptrs], flags)


def prepare_select_genes(k: Kernels, d: DeviceCsr, csr: Csr, genes) -> Launch:
    out_offsets, elements, positions, _ = k.cpu_select_genes(csr, genes)
    n = int(out_offsets[-1])
    src, pos, offs = DeviceBuffer.of(elements), DeviceBuffer.of(positions), DeviceBuffer.of(out_offsets)
    out_v = DeviceBuffer(n * d.itemsize)
    out_i = DeviceBuffer(n * 4)
    v_ptrs = _table(out_v.ptr, out_offsets[:-1], d.itemsize)
    i_ptrs = _table(out_i.ptr, out_offsets[:-1], 4)
    args = _rows_args(d, False) + [_vp(src), _vp(pos), _vp(offs), _vp(v_ptrs), _vp(i_ptrs)]
    dtype = csr.values.dtype
    return Launch(k, "biodali_kgpu_gather_selected", args,
                  lambda: (out_v.fetch(dtype, (n,)), out_i.fetch(np.int32, (n,))),
                  [d, src, pos, offs, out_v, out_i, v_ptrs, i_ptrs], None)


def prepare_densify(k: Kernels, d: DeviceCsr, n_features: int, genes=None, dtype: str = "float32",
                    normalize: bool = False, target_sum: float = 1e4, log1p: bool = True) -> Launch:
    table = k.gene_table(genes) if genes is not None else None
    table_dev = DeviceBuffer.of(table) if table is not None else None
    length = len(genes) if genes is not None else n_features
    np_type = np.dtype(DENSE_NUMPY[dtype])
    out, out_ptrs = d.output_rows(length * np_type.itemsize)
    flags = DeviceBuffer(4, zero=True)
    args = _rows_args(d, True) + [ctypes.c_int64(n_features), _vp(table_dev),
                                  ctypes.c_int64(0 if table is None else len(table)), ctypes.c_int64(length),
                                  dtype.encode(), ctypes.c_int(int(normalize)), ctypes.c_double(target_sum),
                                  ctypes.c_int(int(log1p)), _vp(out_ptrs), _vp(flags)]
    return Launch(k, "biodali_kgpu_densify", args, lambda: out.fetch(np_type, (d.num_rows, length)),
                  [d, table_dev, out, out_ptrs], flags)


def prepare_downsample(k: Kernels, d: DeviceCsr, fraction=-1.0, target_total=-1.0, seed: int = 0,
                       batch_counter: int = 0, random_stream: int = DOWNSAMPLE_STREAM) -> Launch:
    f = DeviceBuffer.of(_per_row(fraction, d.num_rows))
    t = DeviceBuffer.of(_per_row(target_total, d.num_rows))
    out, out_ptrs = d.output_like(d.itemsize)
    flags = DeviceBuffer(4, zero=True)
    args = _rows_args(d, False) + [_vp(f), _vp(t), ctypes.c_int64(seed), ctypes.c_uint64(batch_counter),
                                   ctypes.c_uint32(random_stream), _vp(out_ptrs), _vp(flags)]
    dtype = d.host.values.dtype
    return Launch(k, "biodali_kgpu_downsample", args, lambda: out.fetch(dtype, (d.nnz,)), [d, f, t, out, out_ptrs],
                  flags)


def prepare_mask(k: Kernels, d: DeviceCsr, probability=0.15, seed: int = 0, batch_counter: int = 0,
                 by_column: bool = True, random_stream: int = MASK_STREAM) -> Launch:
    p = DeviceBuffer.of(_per_row(probability, d.num_rows))
    out, out_ptrs = d.output_like(d.itemsize)
    head = [d.dtype.encode(), _vp(d.value_ptrs), _vp(d.index_ptrs) if by_column else None, _vp(d.offsets),
            ctypes.c_int(d.num_rows), ctypes.c_int64(d.nnz)]
    args = head + [_vp(p), ctypes.c_int64(seed), ctypes.c_uint64(batch_counter), ctypes.c_uint32(random_stream),
                   _vp(out_ptrs)]
    dtype = d.host.values.dtype
    return Launch(k, "biodali_kgpu_mask", args, lambda: out.fetch(dtype, (d.nnz,)), [d, p, out, out_ptrs], None)


def prepare_rank_tokens(k: Kernels, d: DeviceCsr, medians, max_length: int = 2048, pad_id: int = 0,
                        token_offset: int = 0) -> Launch:
    m = np.ascontiguousarray(medians, np.float32)
    m_dev = DeviceBuffer.of(m)
    tokens, token_ptrs = d.output_rows(max_length * 4)
    lengths, length_ptrs = d.output_rows(4)
    flags = DeviceBuffer(4, zero=True)
    args = _rows_args(d, True) + [_vp(m_dev), ctypes.c_int64(len(m)), ctypes.c_int64(max_length),
                                  ctypes.c_int32(pad_id), ctypes.c_int32(token_offset), _vp(token_ptrs),
                                  _vp(length_ptrs), _vp(flags)]
    return Launch(k, "biodali_kgpu_rank_tokens", args,
                  lambda: (tokens.fetch(np.int32, (d.num_rows, max_length)), lengths.fetch(np.int32, (d.num_rows,))),
                  [d, m_dev, tokens, token_ptrs, lengths, length_ptrs], flags)


def prepare_bin_values(k: Kernels, d: DeviceCsr, n_bins: int = 51) -> Launch:
    out, out_ptrs = d.output_like(4)
    flags = DeviceBuffer(4, zero=True)
    args = _rows_args(d, False) + [ctypes.c_int(n_bins), _vp(out_ptrs), _vp(flags)]
    return Launch(k, "biodali_kgpu_bin_values", args, lambda: out.fetch(np.int32, (d.nnz,)), [d, out, out_ptrs], flags)


# ------------------------------------------------------------------------------------------------
# Command line (works without DALI: python3 python/biodali/_kernels.py ...)


def _main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="_kernels.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the DALI-free libbiodali_kernels.so")
    b.add_argument("--out", default=str(DEFAULT_BUILD_DIR))
    b.add_argument("--arch", help='compute capabilities, e.g. "90" or "80;90" (default: the GPUs found)')
    b.add_argument("--no-cuda", action="store_true", help="CPU twins only")
    b.add_argument("--jobs", type=int)
    i = sub.add_parser("info", help="which library loads, with or without CUDA, devices it sees")
    i.add_argument("--lib")
    args = ap.parse_args(argv)
    if args.cmd == "build":
        archs = [a for a in args.arch.replace(",", ";").split(";") if a] if args.arch else None
        info = build(args.out, cuda=False if args.no_cuda else None, archs=archs, jobs=args.jobs)
        print(json.dumps(info))
        return 0
    k = load(args.lib)
    print(json.dumps({"library": str(k.path), "cuda": k.has_cuda, "devices": k.device_count()}))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
