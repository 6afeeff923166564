"""The CPU side of the kernel comparisons, run on every machine: the twins' C API
(biodali_kcpu_*) against numpy references on the batches the GPU tests use, and the DALI-free
library build. Not marked `gpu`."""
from __future__ import annotations

import numpy as np
import pytest

from kernel_cases import (BATCHES, DENSE_TYPES, VALUE_DTYPES, Csr, K, as_dtype, awkward_floats,  # noqa: F401
                          kernels, n_features_of)


def normalize_ref(csr: Csr, target_sum=1e4, log1p=True) -> np.ndarray:
    out = np.zeros(csr.nnz, np.float64)
    for r, row in enumerate(csr.rows(csr.values.astype(np.float64))):
        total = row.sum()
        if total > 0:
            out[csr.offsets[r]:csr.offsets[r + 1]] = row * (target_sum / total)
    return (np.log1p(out) if log1p else out).astype(np.float32)


def dense_ref(csr: Csr, n_features: int, genes=None) -> np.ndarray:
    out = np.zeros((csr.num_rows, n_features), np.float64)
    for r, (v, i) in enumerate(zip(csr.rows(csr.values), csr.rows(csr.indices))):
        np.add.at(out[r], i, v.astype(np.float64))
    return (out if genes is None else out[:, genes]).astype(np.float32)


@pytest.mark.parametrize("batch", list(BATCHES))
def test_normalize(kernels, batch):
    csr = BATCHES[batch]()
    np.testing.assert_allclose(kernels.cpu_normalize(csr), normalize_ref(csr), rtol=1e-6, atol=0)
    np.testing.assert_allclose(kernels.cpu_normalize(csr, 123.5, False), normalize_ref(csr, 123.5, False),
                               rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", VALUE_DTYPES)
def test_every_value_dtype(kernels, dtype):
    csr = as_dtype(BATCHES["edge"](), dtype)
    n = n_features_of(csr)
    np.testing.assert_allclose(kernels.cpu_normalize(csr), normalize_ref(csr), rtol=1e-6, atol=0)
    np.testing.assert_array_equal(kernels.cpu_densify(csr, n), dense_ref(csr, n))
    np.testing.assert_array_equal(kernels.cpu_downsample(csr, fraction=1.0), csr.values)
    np.testing.assert_array_equal(kernels.cpu_mask(csr, 0.0), csr.values)


@pytest.mark.parametrize("batch", list(BATCHES))
def test_densify_and_select(kernels, batch):
    csr = BATCHES[batch]()
    n = n_features_of(csr)
    genes = np.random.default_rng(0).permutation(n)[: max(1, n // 3)]
    np.testing.assert_array_equal(kernels.cpu_densify(csr, n), dense_ref(csr, n))
    np.testing.assert_array_equal(kernels.cpu_densify(csr, n, genes=genes), dense_ref(csr, n, genes))
    fused = kernels.cpu_densify(csr, n, genes=genes, normalize=True)
    ref = np.log1p(dense_ref_normalized(csr, n))[:, genes]
    np.testing.assert_allclose(fused, ref.astype(np.float32), rtol=1e-6, atol=0)
    out_offsets, elements, positions, values = kernels.cpu_select_genes(csr, genes)
    table = kernels.gene_table(genes)
    for r in range(csr.num_rows):
        i = csr.rows(csr.indices)[r]
        keep = np.flatnonzero((i < len(table)) & (table[np.minimum(i, len(table) - 1)] >= 0))
        order = np.argsort(table[i[keep]], kind="stable")
        lo, hi = out_offsets[r], out_offsets[r + 1]
        np.testing.assert_array_equal(elements[lo:hi], keep[order])
        np.testing.assert_array_equal(positions[lo:hi], table[i[keep]][order])
        np.testing.assert_array_equal(values[lo:hi], csr.rows(csr.values)[r][keep][order])


def dense_ref_normalized(csr: Csr, n_features: int) -> np.ndarray:
    scaled = Csr(normalize_ref(csr, log1p=False).astype(np.float64), csr.indices, csr.offsets)
    out = np.zeros((csr.num_rows, n_features), np.float64)
    for r, (v, i) in enumerate(zip(scaled.rows(scaled.values), csr.rows(csr.indices))):
        out[r, i] = v
    return out


@pytest.mark.parametrize("dense", ["float16", "bfloat16"])
def test_half_densify_rounds_once(kernels, dense):
    csr = awkward_floats()
    n = n_features_of(csr)
    out = kernels.cpu_densify(csr, n, dtype=dense)
    ref = dense_ref(csr, n)
    if dense == "float16":
        with np.errstate(over="ignore"):  # values above 65504 become inf on both sides
            np.testing.assert_array_equal(out, ref.astype(np.float16))
    else:  # bfloat16 bits: round to nearest even of the float32 value
        bits = ref.view(np.uint32).astype(np.uint64)
        expect = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        np.testing.assert_array_equal(out, expect)


@pytest.mark.parametrize("n_bins", [2, 7, 51, 4097])
def test_bin_values_is_numpy_digitize(kernels, n_bins):
    for csr in (awkward_floats(), BATCHES["edge"]()):
        out = kernels.cpu_bin_values(csr, n_bins)
        for r, v in enumerate(csr.rows(csr.values.astype(np.float64))):
            nz = v[v != 0]
            expect = np.zeros(len(v), np.int32)
            if len(nz):
                edges = np.quantile(nz, np.linspace(0, 1, n_bins - 1))
                expect[v != 0] = np.digitize(nz, edges)
            np.testing.assert_array_equal(csr.rows(out)[r], expect, err_msg=f"row {r}")


def test_rank_tokens_orders_by_value_over_median(kernels):
    csr = BATCHES["edge"]()
    n = n_features_of(csr)
    medians = np.random.default_rng(3).uniform(0.5, 4, n).astype(np.float32)
    medians[::11] = 0  # genes without a positive median are left out
    tokens, lengths = kernels.cpu_rank_tokens(csr, medians, max_length=64, pad_id=-1, token_offset=2)
    for r in range(csr.num_rows):
        v, i = csr.rows(csr.values)[r].astype(np.float64), csr.rows(csr.indices)[r]
        ok = (v != 0) & (medians[i] > 0)
        ratio, cols = v[ok] / medians[i[ok]].astype(np.float64), i[ok]
        order = np.lexsort((cols, -ratio))[:64]
        assert lengths[r] == len(order)
        np.testing.assert_array_equal(tokens[r, :len(order)], cols[order] + 2)
        assert (tokens[r, len(order):] == -1).all()


def test_downsample_and_mask_are_thinning(kernels):
    csr = BATCHES["tenx"]()
    half = kernels.cpu_downsample(csr, fraction=0.5, seed=3)
    assert (half <= csr.values).all() and 0.45 < half.sum() / csr.values.sum() < 0.55
    np.testing.assert_array_equal(kernels.cpu_downsample(csr, fraction=0.5, seed=3), half)
    assert not np.array_equal(kernels.cpu_downsample(csr, fraction=0.5, seed=3, batch_counter=1), half)
    to_target = kernels.cpu_downsample(csr, target_total=500.0, seed=1)
    totals = np.array([r.sum() for r in csr.rows(to_target)])
    assert (np.abs(totals - 500) < 120).all()
    assert (kernels.cpu_mask(csr, 1.0) == 0).all()
    masked = kernels.cpu_mask(csr, 0.25, seed=9)
    assert 0.2 < np.mean((masked == 0) & (csr.values != 0)) < 0.3
    # keyed by column: the row with its entries in another order gets the same mask per column
    perm = np.random.default_rng(1).permutation(csr.rows(csr.indices)[0].size)
    row = Csr.from_rows([csr.rows(csr.values)[0][perm]], [csr.rows(csr.indices)[0][perm]])
    first = Csr.from_rows([csr.rows(csr.values)[0]], [csr.rows(csr.indices)[0]])
    np.testing.assert_array_equal(kernels.cpu_mask(row, 0.3, seed=2)[np.argsort(perm)], kernels.cpu_mask(first, 0.3, seed=2))


@pytest.mark.parametrize("call, message", [
    (lambda k, c: k.cpu_normalize(Csr.from_rows([[1.0, -2.0]], [[0, 1]])), r"row 0: normalize needs non-negative"),
    (lambda k, c: k.cpu_downsample(Csr.from_rows([[1.0], [1.5]], [[0], [0]]), 0.5), r"row 1: downsample needs"),
    (lambda k, c: k.cpu_densify(Csr.from_rows([[1.0]], [[9]]), 4), r"row 0: column index 9 .* outside \[0, 4\)"),
    (lambda k, c: k.cpu_bin_values(c, 1), r"n_bins must be in"),
    (lambda k, c: k.cpu_normalize(c.astype(np.float16)), r"float16"),
    (lambda k, c: k.cpu_densify(c, 5, genes=[1, 1]), r"listed twice"),
])
def test_errors_name_the_row(kernels, call, message):
    with pytest.raises(RuntimeError, match=message):
        call(kernels, Csr.from_rows([[1.0, 2.0]], [[0, 3]]))


def test_dali_free_library_builds_and_matches(kernels, tmp_path):
    """The library the GPU check builds (here without CUDA) links no DALI and computes what the
    loaded library computes."""
    info = K.build(tmp_path, cuda=False, verbose=False)
    lib = tmp_path / K.LIB_NAME
    assert not info["cuda"] and lib.exists()
    standalone = K.load(lib)
    assert not standalone.has_cuda and standalone.device_count() == 0
    csr = BATCHES["edge"]()
    n = n_features_of(csr)
    np.testing.assert_array_equal(standalone.cpu_densify(csr, n, normalize=True), kernels.cpu_densify(csr, n, normalize=True))
    np.testing.assert_array_equal(standalone.cpu_bin_values(csr, 9), kernels.cpu_bin_values(csr, 9))


def test_cuda_half_marshals_its_arguments_without_a_device(kernels):
    """On a machine without a GPU, every gpu_* call gets through ctypes' argument checks to the
    CUDA runtime, which then reports the missing device by the operator's name."""
    if not kernels.has_cuda:
        pytest.skip(f"{kernels.path} was built without CUDA")
    if kernels.device_count() > 0:
        pytest.skip("a device is present: test_kernels_gpu.py runs the kernels themselves")
    csr = BATCHES["edge"]()
    n = n_features_of(csr)
    calls = {
        "normalize": lambda: kernels.gpu_normalize(csr),
        "select_genes": lambda: kernels.gpu_select_genes(csr, [3, 1]),
        "densify": lambda: kernels.gpu_densify(csr, n, genes=[3, 1], dtype="bfloat16", normalize=True),
        "downsample": lambda: kernels.gpu_downsample(csr, 0.5, seed=1),
        "mask": lambda: kernels.gpu_mask(csr, 0.5, by_column=False),
        "scratch": lambda: kernels.gpu_rank_tokens(csr, np.ones(n), 8),
        "scratch ": lambda: kernels.gpu_bin_values(csr, 5),
    }
    with K.fake_device():
        for name, call in calls.items():
            with pytest.raises(RuntimeError, match=rf"^{name.strip()}: .*(CUDA|cuda|device|driver)"):
                call()
        empty = Csr(np.zeros(0, np.float32), np.zeros(0, np.int32), np.zeros(1, np.int64))
        assert kernels.gpu_normalize(empty)[0].size == 0  # nothing to launch: no error
