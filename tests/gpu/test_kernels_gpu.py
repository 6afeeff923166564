"""Every expression CUDA kernel against its CPU twin through the kernel C API, without DALI:
random 10x-like rows, edge cases (empty, all-zero, the largest rows), every value dtype.
Bit-exact where the README promises it (integer outputs, random draws, select_genes, densify);
normalize and the fused normalize_densify within 1e-6 relative (half types: one rounding step).
Marked `gpu`: skipped without a CUDA device (tests/conftest.py) or a library built with CUDA."""
from __future__ import annotations

import numpy as np
import pytest

from kernel_cases import (BATCHES, DENSE_TYPES, VALUE_DTYPES, Csr, as_dtype, awkward_floats,  # noqa: F401
                          gpu_kernels, kernels, n_features_of)

pytestmark = pytest.mark.gpu
ALL = list(BATCHES) + ["awkward"]
NEGATIVE, NON_INTEGER, OUT_OF_RANGE = 1, 2, 4


def batch(name: str) -> Csr:
    return awkward_floats() if name == "awkward" else BATCHES[name]()


def genes_for(csr: Csr, seed: int = 0) -> np.ndarray:
    n = n_features_of(csr)
    return np.random.default_rng(seed).permutation(n)[: max(1, n // 3)]


def assert_close_f32(gpu, cpu, what):
    assert gpu.dtype == cpu.dtype and gpu.shape == cpu.shape
    np.testing.assert_array_equal(gpu == 0, cpu == 0, err_msg=f"{what}: zeros differ")
    np.testing.assert_allclose(gpu, cpu, rtol=1e-6, atol=0, err_msg=what)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("target_sum, log1p", [(1e4, True), (1e6, True), (123.5, False)])
def test_normalize(gpu_kernels, name, target_sum, log1p):
    csr = batch(name)
    out, flags = gpu_kernels.gpu_normalize(csr, target_sum, log1p)
    assert flags == 0
    assert_close_f32(out, gpu_kernels.cpu_normalize(csr, target_sum, log1p), name)


@pytest.mark.parametrize("dtype", VALUE_DTYPES)
@pytest.mark.parametrize("name", ["tenx", "edge"])
def test_every_op_every_dtype(gpu_kernels, dtype, name):
    k, csr = gpu_kernels, as_dtype(batch(name), dtype)
    n, genes = n_features_of(csr), genes_for(csr)
    out, flags = k.gpu_normalize(csr)
    assert flags == 0
    assert_close_f32(out, k.cpu_normalize(csr), f"normalize {dtype}")
    v, p, flags = k.gpu_select_genes(csr, genes)
    _, _, positions, values = k.cpu_select_genes(csr, genes)
    assert v.dtype == values.dtype
    np.testing.assert_array_equal(v, values)
    np.testing.assert_array_equal(p, positions)
    out, flags = k.gpu_densify(csr, n, genes=genes)
    assert flags == 0
    np.testing.assert_array_equal(out, k.cpu_densify(csr, n, genes=genes))
    out, _ = k.gpu_downsample(csr, fraction=0.4, seed=7, batch_counter=3)
    np.testing.assert_array_equal(out, k.cpu_downsample(csr, fraction=0.4, seed=7, batch_counter=3))
    out, _ = k.gpu_mask(csr, 0.3, seed=5)
    np.testing.assert_array_equal(out, k.cpu_mask(csr, 0.3, seed=5))
    medians = np.linspace(0.5, 3, n).astype(np.float32)
    tokens, lengths, _ = k.gpu_rank_tokens(csr, medians, max_length=128)
    t_cpu, l_cpu = k.cpu_rank_tokens(csr, medians, max_length=128)
    np.testing.assert_array_equal(lengths, l_cpu)
    np.testing.assert_array_equal(tokens, t_cpu)
    out, _ = k.gpu_bin_values(csr, 51)
    np.testing.assert_array_equal(out, k.cpu_bin_values(csr, 51))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("with_genes", [False, True])
@pytest.mark.parametrize("dense", DENSE_TYPES)
def test_densify(gpu_kernels, name, with_genes, dense):
    csr = batch(name)
    n = n_features_of(csr)
    genes = genes_for(csr) if with_genes else None
    out, flags = gpu_kernels.gpu_densify(csr, n, genes=genes, dtype=dense)
    assert flags == 0
    np.testing.assert_array_equal(out.view(np.uint8), gpu_kernels.cpu_densify(csr, n, genes=genes, dtype=dense).view(np.uint8))


def test_densify_sums_repeated_columns(gpu_kernels):
    """Repeated columns are summed (scipy's rule); small integers add exactly in any order (sums
    stay below 256, exact even in bfloat16's 8 significant bits)."""
    rng = np.random.default_rng(8)
    cols = rng.integers(0, 20, 2000).astype(np.int32)
    csr = Csr.from_rows([rng.integers(0, 2, 2000).astype(np.float32), np.ones(3, np.float32)], [cols, [1, 1, 1]])
    assert np.bincount(cols, csr.values[:2000]).max() < 256
    for dense in DENSE_TYPES:
        out, _ = gpu_kernels.gpu_densify(csr, 20, dtype=dense)
        np.testing.assert_array_equal(out, gpu_kernels.cpu_densify(csr, 20, dtype=dense))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dense", DENSE_TYPES)
@pytest.mark.parametrize("target_sum, log1p", [(1e4, True), (50.0, False)])
def test_normalize_densify(gpu_kernels, name, dense, target_sum, log1p):
    csr = batch(name)
    n, genes = n_features_of(csr), genes_for(csr, 1)
    out, flags = gpu_kernels.gpu_densify(csr, n, genes=genes, dtype=dense, normalize=True, target_sum=target_sum,
                                         log1p=log1p)
    cpu = gpu_kernels.cpu_densify(csr, n, genes=genes, dtype=dense, normalize=True, target_sum=target_sum,
                                  log1p=log1p)
    assert flags == 0
    if dense == "float32":
        assert_close_f32(out, cpu, name)
    else:  # log1p may differ in the last float32 bit, which can flip a 16-bit rounding
        assert np.abs(out.view(np.int16).astype(np.int32) - cpu.view(np.int16)).max() <= 1


@pytest.mark.parametrize("name", ALL)
def test_select_genes(gpu_kernels, name):
    csr = batch(name)
    for seed in range(3):
        genes = genes_for(csr, seed)
        v, p, _ = gpu_kernels.gpu_select_genes(csr, genes)
        _, _, positions, values = gpu_kernels.cpu_select_genes(csr, genes)
        np.testing.assert_array_equal(v, values)
        np.testing.assert_array_equal(p, positions)


@pytest.mark.parametrize("name", ["tenx", "edge", "largest"])
@pytest.mark.parametrize("args", [dict(fraction=0.3), dict(fraction=0.9), dict(fraction=1.0), dict(fraction=0.0),
                                  dict(target_total=60.0), dict(target_total=1e9)])
def test_downsample(gpu_kernels, name, args):
    csr = batch(name)
    for counter in (0, 1, 2 ** 40):
        out, flags = gpu_kernels.gpu_downsample(csr, seed=11, batch_counter=counter, **args)
        assert flags == 0
        np.testing.assert_array_equal(out, gpu_kernels.cpu_downsample(csr, seed=11, batch_counter=counter, **args))


def test_downsample_large_counts_and_per_row_arguments(gpu_kernels):
    rng = np.random.default_rng(2)
    csr = Csr.from_rows([rng.integers(0, 5000, 300), [10 ** 6], [2 ** 24], []], [np.arange(300), [0], [1], []],
                        np.int32)
    fraction = np.array([0.37, -1, 0.5, 0.2], np.float32)
    target = np.array([-1, 1000.0, -1, -1], np.float32)
    out, flags = gpu_kernels.gpu_downsample(csr, fraction, target, seed=5)
    assert flags == 0
    np.testing.assert_array_equal(out, gpu_kernels.cpu_downsample(csr, fraction, target, seed=5))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("probability", [0.0, 0.15, 0.5, 1.0])
@pytest.mark.parametrize("by_column", [True, False])
def test_mask(gpu_kernels, name, probability, by_column):
    csr = batch(name)
    out, _ = gpu_kernels.gpu_mask(csr, probability, seed=4, batch_counter=9, by_column=by_column)
    np.testing.assert_array_equal(out, gpu_kernels.cpu_mask(csr, probability, seed=4, batch_counter=9,
                                                            by_column=by_column))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("max_length, pad_id, token_offset", [(16, 0, 0), (2048, -1, 3), (200000, 0, 0)])
def test_rank_tokens(gpu_kernels, name, max_length, pad_id, token_offset):
    csr = batch(name)
    n = n_features_of(csr)
    rng = np.random.default_rng(6)
    for medians in (np.ones(n, np.float32), rng.uniform(0.1, 5, n).astype(np.float32),
                    np.where(rng.random(n) < 0.2, 0, rng.integers(1, 4, n)).astype(np.float32)[: n - 5]):
        if max_length > 100000 and name == "tenx":
            continue  # [48, 200000] int32 twice is fine but slow to compare; edge/largest cover it
        tokens, lengths, flags = gpu_kernels.gpu_rank_tokens(csr, medians, max_length, pad_id, token_offset)
        t_cpu, l_cpu = gpu_kernels.cpu_rank_tokens(csr, medians, max_length, pad_id, token_offset)
        assert flags == 0
        np.testing.assert_array_equal(lengths, l_cpu)
        np.testing.assert_array_equal(tokens, t_cpu)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("n_bins", [2, 5, 51, 4097])
def test_bin_values(gpu_kernels, name, n_bins):
    csr = batch(name)
    out, flags = gpu_kernels.gpu_bin_values(csr, n_bins)
    assert flags == 0
    np.testing.assert_array_equal(out, gpu_kernels.cpu_bin_values(csr, n_bins))
    normalized = Csr(gpu_kernels.cpu_normalize(csr), None, csr.offsets)
    out, _ = gpu_kernels.gpu_bin_values(normalized, n_bins)
    np.testing.assert_array_equal(out, gpu_kernels.cpu_bin_values(normalized, n_bins))


def test_empty_batches(gpu_kernels):
    """No rows, and rows that are all empty: nothing launched or nothing to do, no error."""
    for csr in (Csr(np.zeros(0, np.float32), np.zeros(0, np.int32), np.zeros(1, np.int64)),
                Csr.from_rows([[], [], []], [[], [], []], np.float32)):
        assert gpu_kernels.gpu_normalize(csr)[1] == 0
        out, _ = gpu_kernels.gpu_densify(csr, 4)
        np.testing.assert_array_equal(out, gpu_kernels.cpu_densify(csr, 4))
        tokens, lengths, _ = gpu_kernels.gpu_rank_tokens(csr, np.ones(4, np.float32), 8)
        np.testing.assert_array_equal(tokens, gpu_kernels.cpu_rank_tokens(csr, np.ones(4, np.float32), 8)[0])
        assert gpu_kernels.gpu_bin_values(csr, 5)[0].size == 0


@pytest.mark.parametrize("op, bit", [
    (lambda k, c: k.gpu_normalize(Csr(np.array([1, -2, 3], np.float32), c.indices, c.offsets))[-1], NEGATIVE),
    (lambda k, c: k.gpu_normalize(Csr(np.array([1, np.nan, 3], np.float32), c.indices, c.offsets))[-1], NEGATIVE),
    (lambda k, c: k.gpu_downsample(Csr(np.array([1, 2.5, 3], np.float32), c.indices, c.offsets), 0.5)[-1],
     NON_INTEGER),
    (lambda k, c: k.gpu_downsample(Csr(np.array([1, 2 ** 24 + 1, 3], np.int64), c.indices, c.offsets), 0.5)[-1],
     NON_INTEGER),
    (lambda k, c: k.gpu_densify(c, 5)[-1], OUT_OF_RANGE),
    (lambda k, c: k.gpu_densify(Csr(c.values, np.array([0, -1, 2], np.int32), c.offsets), 10)[-1], OUT_OF_RANGE),
    (lambda k, c: k.gpu_rank_tokens(Csr(c.values, np.array([0, -1, 2], np.int32), c.offsets), np.ones(10))[-1],
     OUT_OF_RANGE),
    (lambda k, c: k.gpu_bin_values(Csr(np.array([1, -2, 3], np.float32), c.indices, c.offsets))[-1], NEGATIVE),
])
def test_bad_data_sets_the_error_flag(gpu_kernels, op, bit):
    """What the twins raise on, the kernels flag in the device word the operators read back."""
    csr = Csr.from_rows([[1.0, 2.0, 3.0]], [[0, 7, 2]])
    assert op(gpu_kernels, csr) & bit


def test_launches_are_stream_ordered(gpu_kernels):
    """Kernels run on torch's current stream: a second stream's work waits for nothing."""
    import torch

    csr = batch("tenx")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        out, flags = gpu_kernels.gpu_normalize(csr)
    assert flags == 0
    assert_close_f32(out, gpu_kernels.cpu_normalize(csr), "side stream")
