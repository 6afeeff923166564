"""Bad input to fn.biodali.expression.*: each is a Python exception whose message names the problem
(hand-made batches through external_source, or mismatched outputs of the reader)."""
import re

import numpy as np
import pytest
from nvidia.dali import fn, types

import biodali.expression as bx
from expression_utils import read_through, run_on

E = fn.biodali.expression


def f32(*v):
    return np.array(v, np.float32)


def i32(*v):
    return np.array(v, np.int32)


OK_VALUES, OK_INDICES = [f32(1, 2, 3)], [i32(0, 1, 2)]

# (id, op, inputs, message regex): each op runs once on its inputs (lists of per-sample arrays)
SPARSE_OPS = {
    "select_genes": lambda v, i: E.select_genes(v, i, genes=[0, 1]),
    "densify": lambda v, i: E.densify(v, i, n_features=8),
    "mask": lambda v, i: E.mask(v, i, probability=0.5),
    "rank_tokens": lambda v, i: E.rank_tokens(v, i, gene_medians=[1.0] * 8, max_length=4),
}
VALUE_OPS = {
    "normalize": lambda v: E.normalize(v),
    "downsample": lambda v: E.downsample(v, fraction=0.5),
    "mask": lambda v: E.mask(v),
    "bin_values": lambda v: E.bin_values(v, n_bins=5),
}

CASES = [
    *[(f"lengths-{name}", op, [[f32(1, 2, 3), f32(4)], [i32(0, 1), i32(0)]],
       r"sample 0: values has 3 elements but indices has 2") for name, op in SPARSE_OPS.items()],
    *[(f"int64-indices-{name}", op, [OK_VALUES, [np.array([0, 1, 2], np.int64)]], r"indices must be int32")
      for name, op in SPARSE_OPS.items()],
    *[(f"float16-{name}", op, [[f32(1, 2, 3).astype(np.float16)], OK_INDICES], r"float16 .*cast")
      for name, op in SPARSE_OPS.items()],
    *[(f"float16-{name}", op, [[f32(1, 2, 3).astype(np.float16)]], r"float16 .*cast") for name, op in VALUE_OPS.items()],
    *[(f"bool-{name}", op, [[np.array([True, False])]], r"not supported") for name, op in VALUE_OPS.items()],
    *[(f"2d-{name}", op, [[np.ones((2, 3), np.float32)]], r"1-D") for name, op in VALUE_OPS.items()],
    ("densify-index-too-large", SPARSE_OPS["densify"], [[f32(1, 2)], [i32(3, 8)]],
     r"column index 8 at element 1 is outside \[0, 8\)"),
    ("densify-negative-index", SPARSE_OPS["densify"], [[f32(1, 2)], [i32(3, -1)]], r"column index -1 .*outside"),
    ("densify-genes-index-too-large", lambda v, i: E.densify(v, i, n_features=4, genes=[1, 0]),
     [[f32(1, 2)], [i32(0, 4)]], r"column index 4 .*outside \[0, 4\)"),
    ("select-negative-index", SPARSE_OPS["select_genes"], [[f32(1, 2)], [i32(0, -3)]], r"negative column index -3"),
    ("select-repeated-column-sorted-path", lambda v, i: E.select_genes(v, i, genes=list(range(100))),
     [[f32(1, 2, 3)], [i32(4, 9, 4)]], r"column 4 appears twice"),
    ("select-repeated-column-sweep-path", SPARSE_OPS["select_genes"], [[f32(1, 2, 3)], [i32(1, 0, 1)]],
     r"column 1 appears twice"),
    ("rank-negative-index", SPARSE_OPS["rank_tokens"], [[f32(1, 2)], [i32(0, -1)]], r"negative column index"),
    ("rank-negative-value", SPARSE_OPS["rank_tokens"], [[f32(1, -2)], [i32(0, 1)]],
     r"rank_tokens needs non-negative values"),
    ("downsample-non-integer", VALUE_OPS["downsample"], [[f32(1, 2.5, 3)]],
     r"downsample needs non-negative integer counts up to 2\^24 \(value 2.5 at element 1\)"),
    ("downsample-negative-float", VALUE_OPS["downsample"], [[f32(1, -2)]], r"non-negative integer counts"),
    ("downsample-negative-int", VALUE_OPS["downsample"], [[i32(1, -2)]], r"non-negative integer counts"),
    ("downsample-nan", VALUE_OPS["downsample"], [[f32(1, np.nan)]], r"non-negative integer counts"),
    ("normalize-negative", VALUE_OPS["normalize"], [[f32(1, -2)]], r"normalize needs non-negative values"),
    ("normalize-negative-int", VALUE_OPS["normalize"], [[np.array([3, -1], np.int16)]], r"non-negative values"),
    ("normalize-nan", VALUE_OPS["normalize"], [[f32(1, np.nan)]], r"non-negative values"),
    ("bin-negative", VALUE_OPS["bin_values"], [[f32(0, 1, -0.5)]], r"bin_values needs non-negative values"),
    # arguments
    ("select-empty-genes", lambda v, i: E.select_genes(v, i, genes=[]), [OK_VALUES, OK_INDICES], r"`genes` is empty"),
    ("select-repeated-genes", lambda v, i: E.select_genes(v, i, genes=[1, 2, 1]), [OK_VALUES, OK_INDICES],
     r"listed twice"),
    ("select-negative-gene", lambda v, i: E.select_genes(v, i, genes=[1, -2]), [OK_VALUES, OK_INDICES],
     r"negative"),
    ("densify-no-n-features", lambda v, i: E.densify(v, i, n_features=0), [OK_VALUES, OK_INDICES], r"n_features"),
    ("densify-dtype", lambda v, i: E.densify(v, i, n_features=4, dtype="int8"), [OK_VALUES, OK_INDICES],
     r"dtype must be float32, float16 or bfloat16"),
    ("densify-repeated-genes", lambda v, i: E.densify(v, i, n_features=4, genes=[0, 0]), [OK_VALUES, OK_INDICES],
     r"listed twice"),
    ("downsample-both", lambda v: E.downsample(v, fraction=0.5, target_total=10.0), [OK_VALUES],
     r"exactly one of fraction and target_total"),
    ("downsample-neither", lambda v: E.downsample(v), [OK_VALUES], r"exactly one of fraction and target_total"),
    ("downsample-fraction", lambda v: E.downsample(v, fraction=1.5), [OK_VALUES], r"fraction must be in \[0, 1\]"),
    ("mask-probability", lambda v: E.mask(v, probability=1.5), [OK_VALUES], r"probability must be in \[0, 1\]"),
    ("rank-max-length", lambda v, i: E.rank_tokens(v, i, gene_medians=[1.0], max_length=0), [OK_VALUES, OK_INDICES],
     r"max_length must be > 0"),
    ("rank-empty-medians", lambda v, i: E.rank_tokens(v, i, gene_medians=[]), [OK_VALUES, OK_INDICES],
     r"gene_medians is empty"),
    ("bin-n-bins", lambda v: E.bin_values(v, n_bins=1), [OK_VALUES], r"n_bins must be >= 2"),
    ("normalize-target-sum", lambda v: E.normalize(v, target_sum=0.0), [OK_VALUES], r"target_sum must be > 0"),
]


@pytest.mark.parametrize("op, inputs, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_error(op, inputs, message):
    with pytest.raises((RuntimeError, ValueError), match=message):
        run_on(op, *inputs)


def test_values_of_the_reader_with_indices_of_select_genes(counts):
    """values and indices of different rows (a wiring mistake) are caught, not read past."""
    with pytest.raises(RuntimeError, match=r"values has \d+ elements but indices has \d+"):
        read_through(counts, lambda v, i: E.densify(v, E.select_genes(v, i, genes=[0, 5, 9])[1], n_features=10))


def test_indices_beyond_n_features_from_the_reader(counts):
    with pytest.raises(RuntimeError, match=rf"column index \d+ at element \d+ is outside \[0, {counts.n_vars - 100}\)"):
        read_through(counts, lambda v, i: E.densify(v, i, n_features=counts.n_vars - 100))


def test_normalized_values_are_not_counts(counts):
    with pytest.raises(RuntimeError, match=r"downsample needs non-negative integer counts up to 2\^24 \(value [\d.]+ at element"):
        read_through(counts, lambda v, i: E.downsample(E.normalize(v), fraction=0.5))


def test_reader_float16_values_name_the_cast(counts):
    with pytest.raises(RuntimeError, match=re.escape("values of type float16 are not supported; cast them first")):
        read_through(counts, lambda v, i: E.normalize(v), reader_kw=dict(dtype=types.FLOAT16))


# --- gene names (Python side) ----------------------------------------------------------------

@pytest.mark.parametrize("call", ["select_genes", "densify"])
def test_genes_not_in_the_store_are_named(counts, call):
    genes = [counts.var_names[3], "NOT_A_GENE", "ALSO_MISSING"]
    wrapper = getattr(bx, call)
    with pytest.raises(ValueError, match=r"2 gene\(s\) not in the var index: 'NOT_A_GENE', 'ALSO_MISSING'"):
        read_through(counts, lambda v, i: wrapper(v, i, genes=genes, path=counts.path))


def test_gene_name_errors(counts):
    names = counts.var_names
    with pytest.raises(ValueError, match="the gene list is empty"):
        bx.gene_columns([], counts.path)
    with pytest.raises(ValueError, match=r"more than once \(columns \[4\]\)"):
        bx.gene_columns([names[4], names[2], names[4]], counts.path)
    with pytest.raises(ValueError, match="more than once"):
        bx.gene_columns([7, 1, 7])
    with pytest.raises(ValueError, match="gene names need `path`"):
        bx.gene_columns([names[0]])
    many = [f"X{k}" for k in range(12)]
    with pytest.raises(ValueError, match=r"12 gene\(s\) not in the var index: 'X0', .* 'X9' \.\.\."):
        bx.gene_columns(many, counts.path)
    assert bx.gene_columns([names[9], names[0]], counts.path) == [9, 0]


def test_densify_gene_beyond_n_features_is_refused():
    values = [np.array([1], np.float32)]
    indices = [np.array([0], np.int32)]
    with pytest.raises(RuntimeError, match=r"gene column 12 is outside \[0, n_features=10\)"):
        run_on(lambda v, i: E.densify(v, i, n_features=10, genes=[12, 3]), values, indices)


def test_downsample_refuses_counts_above_2_to_24():
    values = [np.array([3, 2 ** 24 + 1], np.int64)]
    with pytest.raises(RuntimeError, match=r"counts up to 2\^24 \(value 16777217 at element 1\)"):
        run_on(lambda v: E.downsample(v, fraction=0.5), values)


def test_per_sample_argument_must_be_one_number_per_sample():
    values = [np.array([3, 9], np.int32)]

    def op(v):
        fraction = fn.external_source(source=lambda: [np.array([0.5, 0.5], np.float32)], batch=True)
        return E.downsample(v, fraction=fraction)

    with pytest.raises(RuntimeError, match=r"sample 0: `fraction` must hold one number"):
        run_on(op, values)
