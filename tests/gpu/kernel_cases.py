"""Shared by the DALI-free kernel tests (tests/gpu/): the kernel C API loaded by file path (no
DALI import), fixtures, and the batches every kernel is compared on: random 10x-like rows, edge
cases (empty rows, all-zero rows, the largest rows, unsorted and awkward values) and every value
dtype."""
from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_module():
    name = "biodali_kernels_standalone"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "python" / "biodali" / "_kernels.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


K = _load_module()
Csr = K.Csr
VALUE_DTYPES = K.VALUE_DTYPES
DENSE_TYPES = list(K.DENSE_NUMPY)


@pytest.fixture(scope="session")
def kernels():
    """The kernel C API (skips when no library is built: `make build` or _kernels.py build)."""
    try:
        return K.load()
    except OSError as exc:
        pytest.skip(str(exc))


def cuda_usable(k) -> bool:
    if not k.has_cuda or k.device_count() == 0:
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


@pytest.fixture(scope="session")
def gpu_kernels(kernels):
    """The kernel C API with its CUDA half and a device torch can allocate on; skips otherwise."""
    if not kernels.has_cuda:
        pytest.skip(f"{kernels.path} was built without CUDA")
    if not cuda_usable(kernels):
        pytest.skip("no CUDA device (or torch without CUDA)")
    return kernels


# --- batches ------------------------------------------------------------------------------------

def tenx_like(n_rows: int, n_features: int = 36601, seed: int = 0, mean_nnz: float = 2900.0) -> Csr:
    """Rows with 10x-like statistics: log-normal non-zeros per row (median ~mean_nnz scaled to
    n_features), distinct sorted columns with a power-law popularity, negative-binomial integer
    counts as float32."""
    rng = np.random.default_rng(seed)
    median = mean_nnz * min(1.0, n_features / 36601)
    nnz = np.clip(rng.lognormal(np.log(median), 0.45, n_rows), 1, n_features).astype(np.int64)
    popularity = 1.0 / (np.arange(n_features) + 2.0)
    popularity = popularity[rng.permutation(n_features)]
    values, indices = [], []
    for r in range(n_rows):
        # Gumbel top-k: k distinct columns drawn with weights `popularity`.
        g = np.log(popularity) - np.log(-np.log(rng.random(n_features)))
        cols = np.sort(np.argpartition(-g, nnz[r] - 1)[:nnz[r]]).astype(np.int32)
        counts = rng.negative_binomial(1, 0.3, nnz[r]) + 1
        counts[rng.random(nnz[r]) < 0.05] *= 7
        values.append(counts.astype(np.float32))
        indices.append(cols)
    return Csr.from_rows(values, indices, np.float32)


def edge_rows(n_features: int = 2000, seed: int = 1) -> Csr:
    """Empty rows, all-zero rows, one element, unsorted columns, explicit zeros among values,
    a row over every column (the largest possible canonical row), the first and last column."""
    rng = np.random.default_rng(seed)
    rows = [
        (np.zeros(0), np.zeros(0)),                                       # empty
        (np.zeros(7), rng.choice(n_features, 7, replace=False)),          # all zero
        (np.array([5.0]), np.array([n_features - 1])),                     # one element, last column
        (np.array([3.0, 0.0, 1.0, 0.0, 9.0]), np.array([0, 10, 4, 3, 2])),  # unsorted, explicit zeros
        (np.zeros(0), np.zeros(0)),                                       # empty again
        (rng.integers(1, 50, n_features).astype(float), rng.permutation(n_features)),  # every column
        (np.full(300, 2.0), np.arange(300) * 3),                           # ties
        (rng.integers(0, 3, 1000).astype(float), rng.choice(n_features, 1000, replace=False)),
    ]
    return Csr.from_rows([v for v, _ in rows], [i for _, i in rows], np.float32)


def largest_rows(n_features: int = 36601 * 3, seed: int = 2) -> Csr:
    """Rows far longer than a thread block (256) and than 10x rows: every one of 109,803 columns,
    plus a short row after it."""
    rng = np.random.default_rng(seed)
    big = rng.integers(1, 30, n_features).astype(np.float32)
    return Csr.from_rows([big, np.array([1.0, 2.0], np.float32)],
                         [np.arange(n_features, dtype=np.int32), np.array([0, n_features - 1], np.int32)])


def as_dtype(csr: Csr, dtype: str) -> Csr:
    """Integer counts cast to `dtype` (clipped to 0..100 so that int8 holds them)."""
    v = np.clip(csr.values, 0, 100)
    return Csr(v.astype(dtype), csr.indices, csr.offsets)


def awkward_floats(n: int = 600, seed: int = 4) -> Csr:
    """Non-integer float values over many magnitudes, exact ties, subnormal-adjacent tiny values:
    for normalize, bin_values and the half-precision roundings of densify."""
    rng = np.random.default_rng(seed)
    base = np.concatenate([rng.random(n // 3) * 1e-6, rng.random(n // 3) * 3, 10 ** rng.uniform(2, 6, n // 3)])
    base[::17] = 0.5
    rows = np.array_split(rng.permutation(base), 6)
    cols = [rng.choice(5000, len(r), replace=False) for r in rows]
    return Csr.from_rows([r.astype(np.float32) for r in rows], cols, np.float32)


# Built once per session (tests never modify a batch in place).
BATCHES = {
    "tenx": functools.lru_cache(maxsize=None)(lambda: tenx_like(48, seed=5)),
    "edge": functools.lru_cache(maxsize=None)(edge_rows),
    "largest": functools.lru_cache(maxsize=None)(largest_rows),
}


def n_features_of(csr: Csr) -> int:
    return int(csr.indices.max()) + 1 if csr.nnz else 1
