"""fn.biodali.expression.downsample and mask: the invariants every draw keeps, statistics within
binomial bounds (6 sigma), determinism per seed, fresh draws every batch and epoch, and
checkpoint/restore giving the uninterrupted stream."""
import numpy as np
import pytest
from nvidia.dali import fn, types

from expression_utils import binomial_bounds, build, reader, read_through, run, run_on, to_numpy

E = fn.biodali.expression
SIGMAS = 6.0


def first_epoch(got, n_obs):
    """row -> sample tuple, for the first time each row appears."""
    by_row = {}
    for s in got:
        by_row.setdefault(s[0], s)
    assert len(by_row) == n_obs
    return by_row


def totals(values):
    return int(np.asarray(values, dtype=np.int64).sum())


def check_thinned(values, out):
    assert out.dtype == values.dtype and out.shape == values.shape
    np.testing.assert_array_equal(out, np.round(out))
    assert (out >= 0).all() and (out <= values).all()


# --- downsample ------------------------------------------------------------------------------

@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_downsample_fraction_keeps_the_expected_total(counts, fraction):
    got = first_epoch(read_through(counts, lambda v, i: E.downsample(v, fraction=fraction, seed=11)), counts.n_obs)
    total_in = total_out = 0
    for _, values, _, out in got.values():
        check_thinned(values, out)
        total_in += totals(values)
        total_out += totals(out)
    low, high = binomial_bounds(total_in, fraction, SIGMAS)
    assert low <= total_out <= high, (total_out, low, high)


def test_downsample_target_total(counts):
    row_totals = np.asarray(counts.X.sum(axis=1)).ravel()
    target = float(np.median(row_totals))
    got = first_epoch(read_through(counts, lambda v, i: E.downsample(v, target_total=target, seed=5)), counts.n_obs)
    expected = variance = observed = 0.0
    num_above = 0
    for row, values, _, out in got.values():
        check_thinned(values, out)
        total = totals(values)
        if total <= target:
            np.testing.assert_array_equal(out, values)  # at or below the target: unchanged
            continue
        p = target / total
        num_above += 1
        expected += target
        variance += total * p * (1 - p)
        observed += totals(out)
    assert num_above > counts.n_obs // 3
    assert abs(observed - expected) <= SIGMAS * np.sqrt(variance), (observed, expected, variance)


@pytest.mark.parametrize("dtype", [types.INT32, types.UINT16, types.INT64, types.UINT8, types.FLOAT64])
def test_downsample_integer_dtypes_draw_like_float32(counts, dtype):
    """The draws depend on the counts, not on their type: same seed, same output."""
    as_float = read_through(counts, lambda v, i: E.downsample(v, fraction=0.4, seed=3))
    as_type = read_through(counts, lambda v, i: E.downsample(v, fraction=0.4, seed=3), reader_kw=dict(dtype=dtype))
    for a, b in zip(as_float, as_type):
        assert a[0] == b[0] and b[3].dtype == b[1].dtype == np.dtype(types.to_numpy_type(dtype))
        np.testing.assert_array_equal(a[3], b[3].astype(np.float32))


def test_downsample_int32_store(int_counts):
    got = read_through(int_counts, lambda v, i: E.downsample(v, fraction=0.5, seed=1))
    for _, values, _, out in got:
        assert values.dtype == np.int32
        check_thinned(values, out)


def test_downsample_is_deterministic_per_seed_and_new_every_epoch(counts):
    def transforms(v, i):
        return (E.downsample(v, fraction=0.5, seed=21), E.downsample(v, fraction=0.5, seed=21),
                E.downsample(v, fraction=0.5, seed=22))

    first = read_through(counts, transforms, epochs=2)
    again = read_through(counts, transforms, epochs=2)
    for a, b in zip(first, again):
        for k in range(3, 6):
            np.testing.assert_array_equal(a[k], b[k])
        np.testing.assert_array_equal(a[3], a[4])  # two operators with one seed draw alike
    epoch0, epoch1 = first[:counts.n_obs], first[counts.n_obs:2 * counts.n_obs]
    busy = [k for k, s in enumerate(epoch0) if totals(s[1]) >= 20]
    assert [s[0] for s in epoch0] == [s[0] for s in epoch1]
    assert sum(not np.array_equal(epoch0[k][3], epoch0[k][5]) for k in busy) > 0.9 * len(busy)  # other seed
    assert sum(not np.array_equal(epoch0[k][3], epoch1[k][3]) for k in busy) > 0.9 * len(busy)  # other epoch


def test_downsample_draws_anew_every_batch_and_per_sample():
    row = np.full(200, 5, np.float32)
    batches = run_on(lambda v: E.downsample(v, fraction=0.5, seed=9), [row, row], num_batches=2)
    (b0,), (b1,) = batches[0], batches[1]
    assert not np.array_equal(b0[0], b1[0])  # same input, next batch
    assert not np.array_equal(b0[0], b0[1])  # same input, other sample of the batch


def test_downsample_edge_probabilities():
    row = np.array([0, 1, 7, 30, 2], np.float32)
    outs = run_on(lambda v: (E.downsample(v, fraction=0.0, seed=1), E.downsample(v, fraction=1.0, seed=1),
                             E.downsample(v, target_total=1e9, seed=1), E.downsample(v, target_total=0.0, seed=1)),
                  [row])
    np.testing.assert_array_equal(outs[0][0], np.zeros(5, np.float32))
    np.testing.assert_array_equal(outs[1][0], row)
    np.testing.assert_array_equal(outs[2][0], row)
    np.testing.assert_array_equal(outs[3][0], np.zeros(5, np.float32))


def test_downsample_per_sample_fraction():
    row = np.array([3, 9, 4], np.int32)

    def op(v):
        fraction = fn.external_source(source=lambda: [np.float32(0), np.float32(1)], batch=True)
        return E.downsample(v, fraction=fraction, seed=2)

    (out,) = run_on(op, [row, row])
    np.testing.assert_array_equal(out[0], [0, 0, 0])
    np.testing.assert_array_equal(out[1], row)


# --- mask ------------------------------------------------------------------------------------

@pytest.mark.parametrize("probability", [0.15, 0.5, 0.8])
def test_mask_drop_rate_and_kept_values(counts, probability):
    got = first_epoch(read_through(counts, lambda v, i: (E.mask(v, i, probability=probability, seed=4),
                                                         E.mask(v, probability=probability, seed=4))),
                      counts.n_obs)
    num_values = 0
    dropped = [0, 0]
    for _, values, _, *outs in got.values():
        num_values += len(values)
        for k, out in enumerate(outs):
            assert out.dtype == values.dtype and out.shape == values.shape
            np.testing.assert_array_equal(out[out != 0], values[out != 0])  # kept values unchanged
            dropped[k] += int(np.count_nonzero(out == 0))  # the store holds no explicit zeros
    low, high = binomial_bounds(num_values, probability, SIGMAS)
    assert all(low <= d <= high for d in dropped), (dropped, low, high)


def test_mask_keyed_by_column_gives_one_mask_per_cell(counts):
    """Two arrays of one cell (counts and twice the counts) lose the same genes."""
    got = read_through(counts, lambda v, i: (E.mask(v, i, probability=0.5, seed=8),
                                             E.mask(v * 2, i, probability=0.5, seed=8)))
    for _, values, _, a, b in got:
        np.testing.assert_array_equal(a == 0, b == 0)
        np.testing.assert_array_equal(b, a * 2)


def test_mask_keyed_by_column_ignores_position():
    """A sub-row of the same cell (every other gene) gets the mask of the full row on its genes."""
    rng = np.random.default_rng(0)
    cols = np.sort(rng.choice(5000, 800, replace=False)).astype(np.int32)
    values = rng.integers(1, 50, 800).astype(np.float32)
    full = run_on(lambda v, i: E.mask(v, i, probability=0.5, seed=3), [values, values], [cols, cols])
    half = run_on(lambda v, i: E.mask(v, i, probability=0.5, seed=3), [values[1::2], values[::2]],
                  [cols[1::2], cols[::2]])
    np.testing.assert_array_equal(half[0][0], full[0][0][1::2])
    np.testing.assert_array_equal(half[0][1], full[0][1][::2])
    by_position = run_on(lambda v: E.mask(v, probability=0.5, seed=3), [values])
    assert not np.array_equal(by_position[0][0], full[0][0])


def test_mask_is_deterministic_per_seed_and_new_every_batch():
    row = np.arange(1, 401, dtype=np.float32)
    cols = np.arange(400, dtype=np.int32)

    def op(v, i):
        return E.mask(v, i, probability=0.5, seed=6), E.mask(v, i, probability=0.5, seed=7)

    first = run_on(op, [row, row], [cols, cols], num_batches=2)
    again = run_on(op, [row, row], [cols, cols], num_batches=2)
    for a, b in zip(first, again):
        for out_a, out_b in zip(a, b):
            for sa, sb in zip(out_a, out_b):
                np.testing.assert_array_equal(sa, sb)
    seed6, seed7 = first[0]
    assert not np.array_equal(seed6[0], seed7[0])  # other seed
    assert not np.array_equal(seed6[0], seed6[1])  # other sample of the batch
    assert not np.array_equal(seed6[0], first[1][0][0])  # next batch


@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.uint8, np.float64])
def test_mask_edge_probabilities(dtype):
    row = np.array([1, 2, 3, 0, 5], dtype)
    cols = np.array([4, 0, 9, 2, 7], np.int32)
    outs = run_on(lambda v, i: (E.mask(v, i, probability=0.0, seed=1), E.mask(v, i, probability=1.0, seed=1),
                                E.mask(v, probability=1.0, seed=1)), [row], [cols])
    np.testing.assert_array_equal(outs[0][0], row)
    np.testing.assert_array_equal(outs[1][0], np.zeros(5, dtype))
    np.testing.assert_array_equal(outs[2][0], np.zeros(5, dtype))
    assert all(o[0].dtype == dtype for o in outs)


# --- checkpointing ---------------------------------------------------------------------------

SHUFFLE = dict(random_shuffle=True, seed=7, chunk_size=8, preload_chunks=4)


@pytest.mark.parametrize("stop_after", [0, 3, 9])
def test_checkpoint_resumes_the_random_stream(counts, stop_after):
    num_batches = 12  # 240 cells, batch 32: an epoch and a half

    def graph():
        v, i, row = reader(counts, **SHUFFLE)
        return row, E.downsample(v, fraction=0.5, seed=3), E.mask(v, i, probability=0.3, seed=4)

    full = run(graph, num_batches=num_batches, enable_checkpointing=True)
    head = build(graph, enable_checkpointing=True)
    for _ in range(stop_after):
        head.run()
    checkpoint = head.checkpoint()
    resumed = build(graph, enable_checkpointing=True, checkpoint=checkpoint)
    tail = [to_numpy(resumed.run()) for _ in range(num_batches - stop_after)]
    for a, b in zip(full[stop_after:], tail):
        for out_a, out_b in zip(a, b):
            for sa, sb in zip(out_a, out_b):
                np.testing.assert_array_equal(sa, sb)
