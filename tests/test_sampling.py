"""Block shuffle, sharding, padding and checkpointing of fn.biodali.readers.anndata.
Oracle: the rows the reader reports (return_row_index) and anndata's values for them."""
import numpy as np
import pytest

from reader_utils import make_adata, rows_of, run_reader, write_zarr

N = 301


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    adata = make_adata(n_obs=N, n_vars=40, with_dense=True)
    return write_zarr(adata, tmp_path_factory.mktemp("s") / "a.zarr", zarr_format=3)


def stream(store, **kw):
    """Row ids the reader yields (the row-index output)."""
    kw.setdefault("batch_size", 20)
    batches = run_reader(path=store, array="obsm/X_pca", return_row_index=True, **kw)
    return [int(r) for r in rows_of(batches, 1)]


def shard_size(virtual_shard, num_shards, n=N):
    return n * (virtual_shard + 1) // num_shards - n * virtual_shard // num_shards


def split_epochs(rows, sizes):
    out, pos = [], 0
    for s in sizes:
        out.append(rows[pos:pos + s])
        pos += s
    return out


SHUFFLE = dict(random_shuffle=True, seed=7, chunk_size=8, preload_chunks=4)


def test_each_epoch_is_a_permutation_and_changes(store):
    rows = stream(store, num_batches=46, **SHUFFLE)  # 920 rows: 3 full epochs + a bit
    epochs = split_epochs(rows, [N, N, N])
    for e in epochs:
        assert sorted(e) == list(range(N))
    assert epochs[0] != epochs[1] != epochs[2]
    assert epochs[0] != list(range(N))


def test_same_seed_same_stream_other_seed_other_stream(store):
    a = stream(store, num_batches=20, **SHUFFLE)
    b = stream(store, num_batches=20, **SHUFFLE)
    c = stream(store, num_batches=20, **{**SHUFFLE, "seed": 8})
    assert a == b
    assert a != c


def test_block_shuffle_windows_hold_whole_blocks(store):
    """annbatch's meaning: a window = preload_chunks blocks of chunk_size contiguous rows."""
    rows = stream(store, num_batches=16, **SHUFFLE)[:N]
    window = 8 * 4
    blocks_seen = set()
    pos = 0
    while pos < N:
        # the window's rows come first, so its blocks are the first 4 distinct blocks from here
        blocks = []
        for r in rows[pos:]:
            if r // 8 not in blocks:
                blocks.append(r // 8)
            if len(blocks) == 4:
                break
        members = sorted(r for b in blocks for r in range(b * 8, min(b * 8 + 8, N)))
        size = len(members)
        assert sorted(rows[pos:pos + size]) == members
        assert not blocks_seen & set(blocks)
        blocks_seen |= set(blocks)
        pos += size
    assert pos == N


def test_no_shuffle_is_sequential_across_epochs(store):
    rows = stream(store, num_batches=31)  # 620 rows
    assert rows == (list(range(N)) * 3)[:620]


@pytest.mark.parametrize("stick_to_shard", [False, True])
@pytest.mark.parametrize("shuffle", [False, True])
def test_shards_disjoint_and_covering_without_padding(store, shuffle, stick_to_shard):
    num_shards, epochs = 3, 3
    per_shard = []
    for shard_id in range(num_shards):
        kw = dict(SHUFFLE) if shuffle else {}
        rows = stream(store, num_batches=16, shard_id=shard_id, num_shards=num_shards,
                      stick_to_shard=stick_to_shard, **kw)
        sizes = [shard_size(shard_id if stick_to_shard else (shard_id + e) % num_shards, num_shards)
                 for e in range(epochs)]
        per_shard.append(split_epochs(rows, sizes))
    for e in range(epochs):
        parts = [set(per_shard[s][e]) for s in range(num_shards)]
        assert sum(len(p) for p in parts) == N
        assert set().union(*parts) == set(range(N))
    if stick_to_shard:
        for s in range(num_shards):
            assert set(per_shard[s][0]) == set(per_shard[s][1])
    elif shuffle:
        assert set(per_shard[0][0]) != set(per_shard[0][1])


def test_shards_with_padding(store):
    num_shards, bs = 3, 16
    per_epoch = -(-N // num_shards)  # 101
    batches_per_epoch = -(-per_epoch // bs)  # 7
    seen = [set(), set()]
    for shard_id in range(num_shards):
        rows = stream(store, batch_size=bs, num_batches=2 * batches_per_epoch, shard_id=shard_id,
                      num_shards=num_shards, pad_last_batch=True, **SHUFFLE)
        for e in range(2):
            epoch_rows = rows[e * batches_per_epoch * bs:(e + 1) * batches_per_epoch * bs]
            size = shard_size((shard_id + e) % num_shards, num_shards)
            real, pad = epoch_rows[:size], epoch_rows[size:]
            assert len(set(real)) == size
            assert set(pad) == {real[-1]}  # padding repeats the last row
            assert not seen[e] & set(real)
            seen[e] |= set(real)
    assert seen[0] == seen[1] == set(range(N))


@pytest.mark.parametrize("pad_last_batch", [False, True])
def test_checkpoint_restores_the_exact_stream(store, pad_last_batch):
    kw = dict(path=store, array="obsm/X_pca", return_row_index=True, batch_size=16,
              pad_last_batch=pad_last_batch, enable_checkpointing=True, **SHUFFLE)
    full = run_reader(num_batches=45, **kw)
    for k in (0, 5, 19, 21):
        head, pipe = run_reader(num_batches=k, return_pipe=True, **kw)
        checkpoint = pipe.checkpoint()
        tail = run_reader(num_batches=45 - k, checkpoint=checkpoint, **kw)
        for a, b in zip(full[k:], tail):
            np.testing.assert_array_equal(np.array(a[1]), np.array(b[1]))
            np.testing.assert_array_equal(np.array(a[0]), np.array(b[0]))


@pytest.mark.parametrize("pad_last_batch", [False, True])
@pytest.mark.parametrize("policy", ["FILL", "DROP", "PARTIAL"])
def test_dali_generic_iterator_every_policy(store, policy, pad_last_batch):
    from nvidia.dali import fn, pipeline_def
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

    bs = 32

    @pipeline_def(batch_size=bs, num_threads=2, device_id=None)
    def pipe():
        x, row = fn.biodali.readers.anndata(path=store, array="obsm/X_pca", return_row_index=True,
                                            pad_last_batch=pad_last_batch, name="reader", **SHUFFLE)
        return x, row

    it = DALIGenericIterator(pipe(), ["x", "row"], reader_name="reader",
                             last_batch_policy=LastBatchPolicy[policy])
    delivered = []
    for _ in range(3):
        rows = [int(r) for batch in it for r in batch[0]["row"]]
        it.reset()
        delivered += rows
        if policy == "PARTIAL":
            assert len(rows) == N
            if pad_last_batch:  # exact epochs need pad_last_batch (as with DALI's own readers)
                assert sorted(rows) == list(range(N))
        elif policy == "DROP":
            assert len(rows) == N // bs * bs
            if pad_last_batch:  # without padding, batches straddle epochs (DALI's convention)
                assert len(set(rows)) == len(rows)
        elif pad_last_batch:
            assert len(rows) == -(-N // bs) * bs and set(rows) == set(range(N))
    if policy == "FILL" and not pad_last_batch:
        # DALI's FILL without padding fills the last batch from the next epoch, which then
        # starts where that left off: the rows delivered form one unbroken stream of epochs.
        for e in range(len(delivered) // N):
            assert sorted(delivered[e * N:(e + 1) * N]) == list(range(N))
