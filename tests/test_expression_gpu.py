"""GPU variants of fn.biodali.expression.* against the CPU twins on the same batches: exactly equal
(random draws included) except normalize (relative error <= 1e-6). Marked `gpu`: skipped unless
DALI sees a CUDA device (tests/conftest.py)."""
import numpy as np
import pytest
from nvidia.dali import fn, types

import biodali.expression as bx
from expression_utils import (DENSE_DTYPES, GENE_SETS, awkward_floats, awkward_rows, build, read_through,
                              reader, run, run_on, to_numpy)

pytestmark = pytest.mark.gpu
E = fn.biodali.expression


def on_cpu(x):
    return x


def on_gpu(x):
    return x.gpu()


def cpu_and_gpu(store, transforms, epochs=1, **kw):
    """transforms(values, indices, to_device) read through a CPU-only pipeline and a GPU one
    (to_device moves an input to the GPU there); the two lists of sample tuples."""
    cpu = read_through(store, lambda v, i: transforms(v, i, on_cpu), epochs=epochs, **kw)
    gpu = read_through(store, lambda v, i: transforms(v, i, on_gpu), epochs=epochs, device_id=0, **kw)
    assert len(cpu) == len(gpu)
    for a, b in zip(cpu, gpu):
        assert a[0] == b[0]
    return cpu, gpu


def assert_same(cpu, gpu, first_output=3):
    for a, b in zip(cpu, gpu):
        for k in range(first_output, len(a)):
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, (a[0], k)
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"row {a[0]}, output {k}")


def run_both(op, *columns, num_batches=1):
    """op(*inputs, to_device) on hand-made batches, on the CPU and the GPU."""
    def with_device(to_device, device_id):
        return run_on(lambda *inputs: op(*inputs, to_device), *columns, num_batches=num_batches,
                      device_id=device_id)
    return with_device(on_cpu, None), with_device(on_gpu, 0)


@pytest.mark.parametrize("target_sum, log1p", [(1e4, True), (1e6, True), (123.5, False)])
def test_normalize(counts, target_sum, log1p):
    cpu, gpu = cpu_and_gpu(counts, lambda v, i, d: E.normalize(d(v), target_sum=target_sum, log1p=log1p))
    for a, b in zip(cpu, gpu):
        assert b[3].dtype == np.float32
        np.testing.assert_allclose(b[3], a[3], rtol=1e-6, atol=0, err_msg=f"row {a[0]}")


@pytest.mark.parametrize("dtype", [types.INT32, types.UINT16, types.FLOAT64])
def test_normalize_other_value_types(counts, dtype):
    cpu, gpu = cpu_and_gpu(counts, lambda v, i, d: E.normalize(d(v)), reader_kw=dict(dtype=dtype))
    for a, b in zip(cpu, gpu):
        np.testing.assert_allclose(b[3], a[3], rtol=1e-6, atol=0)


def test_normalize_zero_rows():
    batch = [np.zeros(4, np.float32), np.zeros(0, np.float32), np.array([0, 2, 0, 6], np.float32)]
    cpu, gpu = run_both(lambda v, d: E.normalize(d(v)), batch)
    for a, b in zip(cpu[0], gpu[0]):
        assert np.isfinite(b).all()
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=0)


@pytest.mark.parametrize("gene_set", list(GENE_SETS))
def test_select_genes(counts, gene_set):
    genes = GENE_SETS[gene_set](counts)
    assert_same(*cpu_and_gpu(counts, lambda v, i, d: E.select_genes(d(v), i, genes=genes)))


def test_select_genes_by_name(counts):
    names = [counts.var_names[g] for g in GENE_SETS["random_half"](counts)]
    assert_same(*cpu_and_gpu(counts, lambda v, i, d: bx.select_genes(d(v), i, genes=names, path=counts.path)))


@pytest.mark.parametrize("dtype", DENSE_DTYPES)
def test_densify(counts, dtype):
    def transforms(v, i, d):
        return (E.densify(d(v), d(i), n_features=counts.n_vars, dtype=dtype),
                E.densify(d(E.normalize(v)), d(i), n_features=counts.n_vars, dtype=dtype),
                E.densify(d(v), d(i), n_features=counts.n_vars, genes=GENE_SETS["random_half"](counts), dtype=dtype))
    assert_same(*cpu_and_gpu(counts, transforms))


@pytest.mark.parametrize("dtype", DENSE_DTYPES)
def test_densify_awkward_values(dtype):
    values = awkward_floats()
    order = np.random.default_rng(1).permutation(len(values)).astype(np.int32)
    cpu, gpu = run_both(lambda v, i, d: E.densify(d(v), d(i), n_features=len(values), dtype=dtype),
                        [values[order], values], [order, np.arange(len(values), dtype=np.int32)])
    for a, b in zip(cpu[0], gpu[0]):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


def test_densify_feeds_dali_generic_iterator(counts):
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

    def graph():
        v, i, row = reader(counts)
        return E.densify(v.gpu(), i.gpu(), n_features=counts.n_vars), row

    it = DALIGenericIterator(build(graph, device_id=0), ["x", "row"], reader_name="reader",
                             last_batch_policy=LastBatchPolicy.PARTIAL)
    dense = counts.X.toarray()
    for batch in it:
        x, rows = batch[0]["x"], batch[0]["row"]
        assert x.is_cuda and x.shape == (len(rows), counts.n_vars)
        np.testing.assert_array_equal(x.cpu().numpy(), dense[rows.numpy()])


@pytest.mark.parametrize("args", [dict(fraction=0.3), dict(fraction=0.9), dict(target_total=60.0)])
def test_downsample(counts, args):
    assert_same(*cpu_and_gpu(counts, lambda v, i, d: (E.downsample(d(v), seed=11, **args),
                                                      E.downsample(d(v), seed=12, **args)), epochs=2))


@pytest.mark.parametrize("dtype", [types.INT32, types.UINT16, types.INT64, types.FLOAT64])
def test_downsample_other_value_types(counts, dtype):
    assert_same(*cpu_and_gpu(counts, lambda v, i, d: E.downsample(d(v), fraction=0.5, seed=3),
                             reader_kw=dict(dtype=dtype)))


def test_downsample_large_counts():
    rng = np.random.default_rng(2)
    batch = [rng.integers(0, 5000, 300).astype(np.int32), np.array([10 ** 6], np.int32)]
    cpu, gpu = run_both(lambda v, d: E.downsample(d(v), fraction=0.37, seed=5), batch, num_batches=2)
    for batch_cpu, batch_gpu in zip(cpu, gpu):
        for a, b in zip(batch_cpu[0], batch_gpu[0]):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("probability", [0.0, 0.15, 0.5, 1.0])
def test_mask(counts, probability):
    assert_same(*cpu_and_gpu(counts, lambda v, i, d: (E.mask(d(v), d(i), probability=probability, seed=4),
                                                      E.mask(d(v), probability=probability, seed=4)), epochs=2))


def test_rank_tokens(counts):
    medians = [float(m) for m in bx.gene_medians(counts.path)]

    def transforms(v, i, d):
        return (*E.rank_tokens(d(v), d(i), gene_medians=medians, max_length=16),
                *E.rank_tokens(d(v), d(i), gene_medians=[1.0] * counts.n_vars, max_length=48, pad_id=-1,
                               token_offset=3))
    assert_same(*cpu_and_gpu(counts, transforms))


@pytest.mark.parametrize("n_bins", [2, 5, 51])
def test_bin_values(counts, n_bins):
    assert_same(*cpu_and_gpu(counts, lambda v, i, d: (E.bin_values(d(v), n_bins=n_bins),
                                                      E.bin_values(d(E.normalize(v)), n_bins=n_bins))))


@pytest.mark.parametrize("n_bins", [2, 7, 200])
def test_bin_values_awkward_rows(n_bins):
    for row in awkward_rows():
        cpu, gpu = run_both(lambda v, d: E.bin_values(d(v), n_bins=n_bins), [row])
        np.testing.assert_array_equal(cpu[0][0], gpu[0][0])


@pytest.mark.parametrize("name, op", [
    ("densify", lambda v, i: E.densify(v.gpu(), i.gpu(), n_features=8)),
    ("mask", lambda v, i: E.mask(v.gpu(), i.gpu())),
    ("rank_tokens", lambda v, i: E.rank_tokens(v.gpu(), i.gpu(), gene_medians=[1.0] * 8)),
    ("select_genes", lambda v, i: E.select_genes(v.gpu(), i, genes=[0, 1])),
])
def test_mismatched_lengths_are_an_error(name, op):
    values = [np.array([1, 2, 3], np.float32)]
    indices = [np.array([0, 1], np.int32)]
    with pytest.raises(RuntimeError, match=r"values has 3 elements but indices has 2"):
        run_on(op, values, indices, device_id=0)


def test_float16_values_are_an_error():
    with pytest.raises(RuntimeError, match=r"float16 .*cast"):
        run_on(lambda v: E.normalize(v.gpu()), [np.ones(3, np.float16)], device_id=0)


@pytest.mark.parametrize("stop_after", [0, 3, 9])
def test_checkpoint_resumes_the_random_stream(counts, stop_after):
    shuffle = dict(random_shuffle=True, seed=7, chunk_size=8, preload_chunks=4)
    num_batches = 12

    def graph():
        v, i, row = reader(counts, **shuffle)
        return row, E.downsample(v.gpu(), fraction=0.5, seed=3), E.mask(v.gpu(), i.gpu(), probability=0.3, seed=4)

    full = run(graph, num_batches=num_batches, enable_checkpointing=True, device_id=0)
    head = build(graph, enable_checkpointing=True, device_id=0)
    for _ in range(stop_after):
        head.run()
    resumed = build(graph, enable_checkpointing=True, device_id=0, checkpoint=head.checkpoint())
    tail = [to_numpy(resumed.run()) for _ in range(num_batches - stop_after)]
    for a, b in zip(full[stop_after:], tail):
        for out_a, out_b in zip(a, b):
            for sa, sb in zip(out_a, out_b):
                np.testing.assert_array_equal(sa, sb)


@pytest.mark.parametrize("dtype", DENSE_DTYPES)
def test_normalize_densify(counts, dtype):
    """Fused on the GPU vs fused on the CPU: float32 within 1e-6; half types within one rounding."""
    genes = GENE_SETS["random_half"](counts)
    cpu, gpu = cpu_and_gpu(counts, lambda v, i, d: E.normalize_densify(
        d(v), d(i), genes=genes, n_features=counts.n_vars, dtype=dtype))
    for a, b in zip(cpu, gpu):
        assert a[3].dtype == b[3].dtype and a[3].shape == b[3].shape
        if dtype == "float32":
            np.testing.assert_allclose(b[3], a[3], rtol=1e-6, atol=0, err_msg=f"row {a[0]}")
        else:  # log1p may differ in the last float32 bit, which can flip a 16-bit rounding
            assert np.abs(a[3].view(np.int16).astype(np.int32) - b[3].view(np.int16)).max() <= 1
