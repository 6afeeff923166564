"""fn.biodali.expression.rank_tokens (Geneformer) and bin_values (scGPT) against numpy references,
exactly; biodali.expression.gene_medians against a dense numpy computation."""
import numpy as np
import pytest
from nvidia.dali import fn, types

import biodali.expression as bx
from reader_utils import make_adata, write_zarr
from expression_utils import (awkward_rows, read_through, ref_bin_values, ref_gene_medians, ref_rank_tokens,
                              run_on)

E = fn.biodali.expression


@pytest.fixture(scope="module")
def medians(counts):
    return bx.gene_medians(counts.path)


# --- gene_medians ----------------------------------------------------------------------------

def test_gene_medians_equal_numpy(counts, medians):
    ref = ref_gene_medians(counts.X)
    assert medians.dtype == np.float32 and medians.shape == (counts.n_vars,)
    np.testing.assert_allclose(medians, ref, rtol=1e-6, atol=0)
    never = np.bincount(counts.X.indices, minlength=counts.n_vars) == 0
    assert (medians[never] == 0).all() and (medians[~never] > 0).all()


def test_gene_medians_target_sum_scales(counts, medians):
    np.testing.assert_allclose(bx.gene_medians(counts.path, target_sum=1e6), medians * 100, rtol=1e-6)


def test_gene_medians_max_cells(counts, medians):
    np.testing.assert_array_equal(bx.gene_medians(counts.path, max_cells=10 * counts.n_obs), medians)
    few = bx.gene_medians(counts.path, max_cells=50, seed=1)
    np.testing.assert_array_equal(few, bx.gene_medians(counts.path, max_cells=50, seed=1))
    assert few.shape == medians.shape and np.isfinite(few).all() and not np.array_equal(few, medians)


def test_gene_medians_over_several_stores_and_a_layer(tmp_path):
    """A list of stores pools their cells; a layer gives the medians of that layer."""
    adata = make_adata(n_obs=90, n_vars=25, seed=8, with_dense=True)
    first = write_zarr(adata[:40].copy(), tmp_path / "a.zarr")
    second = write_zarr(adata[40:].copy(), tmp_path / "b.zarr")
    ref = ref_gene_medians(adata.X)
    np.testing.assert_allclose(bx.gene_medians([first, second]), ref, rtol=1e-6, atol=0)
    np.testing.assert_allclose(bx.gene_medians(first, array="layers/counts"), ref_gene_medians(adata.X[:40]),
                               rtol=1e-6, atol=0)


# --- rank_tokens -----------------------------------------------------------------------------

def medians_of(kind, counts, medians):
    if kind == "store":
        return medians
    if kind == "ones":  # every key is the raw value: many ties, broken by column
        return np.ones(counts.n_vars, np.float32)
    # a third of the genes left out (median 0) and the last 50 columns not covered at all
    sparse = medians[:counts.n_vars - 50].copy()
    sparse[np.random.default_rng(4).random(len(sparse)) < 1 / 3] = 0
    return sparse


@pytest.mark.parametrize("kind", ["store", "ones", "sparse"])
@pytest.mark.parametrize("max_length, pad_id, token_offset", [(16, 0, 0), (48, -1, 3), (1, 7, 0)])
def test_rank_tokens_equal_numpy(counts, medians, kind, max_length, pad_id, token_offset):
    med = medians_of(kind, counts, medians)
    got = read_through(counts, lambda v, i: E.rank_tokens(v, i, gene_medians=[float(m) for m in med],
                                                          max_length=max_length, pad_id=pad_id,
                                                          token_offset=token_offset))
    truncated = padded = 0
    for row, values, indices, tokens, length in got:
        ref_tokens, ref_length = ref_rank_tokens(values, indices, med, max_length, pad_id, token_offset)
        assert tokens.dtype == np.int32 and tokens.shape == (max_length,)
        assert length.dtype == np.int32 and length.shape == ()
        np.testing.assert_array_equal(tokens, ref_tokens, err_msg=f"row {row}")
        assert int(length) == ref_length
        truncated += ref_length == max_length
        padded += ref_length < max_length
    assert truncated and padded or max_length == 1


def test_rank_tokens_ties_go_to_the_lower_column():
    values = [np.array([3, 3, 5, 3, 0, 3], np.float32)]
    indices = [np.array([7, 2, 8, 9, 1, 0], np.int32)]
    medians = [1.0] * 8 + [2.5, 1.0]  # column 8: 5 / 2.5 = 2 < 3
    tokens, length = run_on(lambda v, i: E.rank_tokens(v, i, gene_medians=medians, max_length=6, pad_id=-1),
                            values, indices)
    np.testing.assert_array_equal(tokens[0], [0, 2, 7, 9, 8, -1])
    assert int(length[0]) == 5


@pytest.mark.parametrize("dtype", [types.INT32, types.UINT16, types.FLOAT64])
def test_rank_tokens_other_value_types(counts, medians, dtype):
    def transforms(v, i):
        return E.rank_tokens(v, i, gene_medians=[float(m) for m in medians], max_length=24)

    as_float = read_through(counts, transforms)
    as_type = read_through(counts, transforms, reader_kw=dict(dtype=dtype))
    for a, b in zip(as_float, as_type):
        np.testing.assert_array_equal(a[3], b[3])
        assert int(a[4]) == int(b[4])


def test_rank_tokens_empty_and_all_zero_rows():
    values = [np.zeros(0, np.float32), np.zeros(3, np.float32)]
    indices = [np.zeros(0, np.int32), np.array([0, 1, 2], np.int32)]
    tokens, length = run_on(lambda v, i: E.rank_tokens(v, i, gene_medians=[1.0, 1.0, 1.0], max_length=4, pad_id=9),
                            values, indices)
    for t, n in zip(tokens, length):
        np.testing.assert_array_equal(t, [9, 9, 9, 9])
        assert int(n) == 0


# --- bin_values ------------------------------------------------------------------------------

@pytest.mark.parametrize("n_bins", [2, 3, 5, 11, 51])
def test_bin_values_equal_numpy(counts, n_bins):
    """On raw counts (many ties) and on log-normalized values (float32, interpolated edges)."""
    def transforms(v, i):
        normalized = E.normalize(v)
        return E.bin_values(v, n_bins=n_bins), normalized, E.bin_values(normalized, n_bins=n_bins)

    for row, values, _, bins, normalized, normalized_bins in read_through(counts, transforms):
        assert bins.dtype == np.int32 and bins.shape == values.shape
        np.testing.assert_array_equal(bins, ref_bin_values(values, n_bins), err_msg=f"row {row}")
        np.testing.assert_array_equal(normalized_bins, ref_bin_values(normalized, n_bins), err_msg=f"row {row}")
        if len(values):
            assert bins.min() >= 1 and bins.max() <= n_bins - 1


@pytest.mark.parametrize("n_bins", [2, 4, 7, 51, 200])
def test_bin_values_awkward_rows(n_bins):
    rows = awkward_rows()
    for k, row in enumerate(rows):  # one row per batch: rows differ in length
        (out,) = run_on(lambda v: E.bin_values(v, n_bins=n_bins), [row])
        np.testing.assert_array_equal(out[0], ref_bin_values(row, n_bins), err_msg=f"row {k}")
        (as_float,) = run_on(lambda v: E.bin_values(v, n_bins=n_bins), [row.astype(np.float32)])
        np.testing.assert_array_equal(as_float[0], ref_bin_values(row.astype(np.float32), n_bins))


@pytest.mark.parametrize("dtype", [np.int32, np.uint16, np.int64, np.uint8])
def test_bin_values_integer_inputs(dtype):
    rng = np.random.default_rng(3)
    batch = [rng.integers(0, 30, n).astype(dtype) for n in (1, 10, 200, 0)]
    (out,) = run_on(lambda v: E.bin_values(v, n_bins=9), batch)
    for row, bins in zip(batch, out):
        np.testing.assert_array_equal(bins, ref_bin_values(row, 9))
