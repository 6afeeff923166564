"""biodali.torch.ExpressionLoader over time: resuming from state_dict() equals the uninterrupted
stream (mid-epoch and across epoch boundaries), set_epoch, iteration left early, and lifetime:
close(), no thread left behind, a clear error in a forked DataLoader worker, Lightning."""
import gc
import io
import os

import pytest
import torch

import biodali.torch as bt
from loader_utils import N_CELLS, assert_same_stream, to_host, write_anndata_store

BATCH = 32
EPOCHS = 3


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_anndata_store(tmp_path_factory.mktemp("torch_resume"))


def make(store, **kw):
    kw = {"batch_size": BATCH, "return_row_index": True, "obs_columns": ["cell_type"],
          "genes": list(range(0, 200, 4)), **kw}
    return bt.ExpressionLoader(store, **kw)


def stream(loader, num_batches):
    """The next `num_batches` batches, crossing epochs as a training loop would."""
    out = []
    while len(out) < num_batches:
        for batch in loader:
            out.append(to_host(batch))
            if len(out) == num_batches:
                break
    return out


def saved_and_loaded(state):
    """The state after a trip through torch.save / torch.load, as a checkpoint file does."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


SETTINGS = {
    "default": {},
    "drop_last": {"drop_last": True},
    "rank1_of_3": {"rank": 1, "world_size": 3},
    "csr": {"output": "csr", "transform": None},
}


@pytest.mark.parametrize("setting", SETTINGS)
def test_resume_equals_the_uninterrupted_stream(store, setting):
    kw = SETTINGS[setting]
    with make(store, **kw) as loader:
        per_epoch = len(loader)
        total = per_epoch * EPOCHS
        full = stream(loader, total)
    # mid-epoch, the last batch of an epoch, right after an epoch, mid second epoch
    for k in (0, 3, per_epoch - 1, per_epoch, per_epoch + 2):
        with make(store, **kw) as first:
            head = stream(first, k)
            state = saved_and_loaded(first.state_dict())
        assert (state["epoch"], state["batch"]) == divmod(k, per_epoch)
        with make(store, **kw) as resumed:
            resumed.load_state_dict(state)
            assert (resumed.epoch, resumed.batch_in_epoch) == divmod(k, per_epoch)
            assert_same_stream(head + stream(resumed, total - k), full)


def test_state_from_a_differently_built_loader_is_refused(store):
    with make(store, rank=0, world_size=2) as rank0, make(store, rank=1, world_size=2) as rank1:
        with pytest.raises(ValueError, match="rank: saved 0, here 1"):
            rank1.load_state_dict(rank0.state_dict())
        with pytest.raises(ValueError, match="not an ExpressionLoader state"):
            rank1.load_state_dict({"epoch": 0})


def test_iteration_left_early_continues_the_epoch(store):
    with make(store) as reference:
        full = stream(reference, 2 * len(reference))
    with make(store) as loader:
        head = []
        for batch in loader:
            head.append(to_host(batch))
            if len(head) == 3:
                break
        assert loader.epoch == 0 and loader.batch_in_epoch == 3
        rest = [to_host(b) for b in loader]  # the remaining batches of epoch 0, then it ends
        assert len(rest) == len(loader) - 3 and loader.epoch == 1
        second = [to_host(b) for b in loader]
    assert_same_stream(head + rest + second, full)


def test_a_new_iter_stops_the_previous_one(store):
    with make(store) as loader:
        first = iter(loader)
        next(first)
        second = iter(loader)
        next(second)
        assert list(first) == []  # superseded: it ends instead of interleaving with `second`
        assert loader.batch_in_epoch == 2


def test_set_epoch_checks_and_skips_forward(store):
    with make(store) as reference:
        full = stream(reference, 3 * len(reference))
        per_epoch = len(reference)
    with make(store) as loader:
        loader.set_epoch(0)  # where it is: nothing happens
        assert loader.epoch == 0
        with pytest.warns(UserWarning, match="discarding"):
            loader.set_epoch(2)
        assert (loader.epoch, loader.batch_in_epoch) == (2, 0)
        assert_same_stream([to_host(b) for b in loader], full[2 * per_epoch:])
        with pytest.raises(ValueError, match="cannot go back"):
            loader.set_epoch(1)


def test_len_is_known_before_iterating_and_fixed(store):
    with make(store) as loader:
        assert len(loader) == -(-N_CELLS // BATCH)
        assert [sum(1 for _ in loader) for _ in range(2)] == [len(loader)] * 2


def thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


def test_close_stops_every_thread(store):
    with make(store) as warmup:  # DALI's process-wide pools start with the first pipeline
        next(iter(warmup))
    gc.collect()  # pipelines of earlier tests' loaders, if any are still waiting for collection
    baseline = thread_count()
    loader = make(store, num_threads=2)
    next(iter(loader))
    assert thread_count() > baseline
    loader.close()
    loader.close()  # idempotent
    assert thread_count() <= baseline
    with pytest.raises(RuntimeError, match="closed"):
        iter(loader)
    with make(store) as in_context:
        next(iter(in_context))
    assert thread_count() <= baseline


class _LoaderAsDataset(torch.utils.data.IterableDataset):
    """The mistake the error is for: an ExpressionLoader handed to DataLoader workers."""

    def __init__(self, loader):
        self.loader = loader

    def __iter__(self):
        return iter(self.loader)


def test_forked_dataloader_worker_gets_a_clear_error(store):
    with make(store) as loader:
        workers = torch.utils.data.DataLoader(_LoaderAsDataset(loader), batch_size=None, num_workers=1,
                                              multiprocessing_context="fork", timeout=120)
        with pytest.raises(RuntimeError, match="forked child.*DataLoader worker"):
            next(iter(workers))
        # the parent's loader is untouched by the child's failure
        assert len(next(iter(loader))["row_index"]) == BATCH


def test_lightning_datamodule_smoke(store, tmp_path):
    pytest.importorskip("lightning")
    import lightning as L

    from biodali.lightning import ExpressionDataModule

    class Classifier(L.LightningModule):
        def __init__(self, n_genes, n_types):
            super().__init__()
            self.net = torch.nn.Linear(n_genes, n_types)

            self.val_rows = []

        def training_step(self, batch, _):
            return torch.nn.functional.cross_entropy(self.net(batch["X"]), batch["cell_type"].long())

        def validation_step(self, batch, _):
            self.val_rows += batch["row_index"].tolist()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = ExpressionDataModule(store, batch_size=BATCH, val_path=store, obs_columns=["cell_type"],
                                genes=list(range(50)), return_row_index=True)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        num_sanity_val_steps=2, default_root_dir=tmp_path)
    model = Classifier(50, 50)
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 2 * -(-N_CELLS // BATCH)
    # the sanity check's 2 batches, then two whole passes in store order
    rows = model.val_rows
    assert rows[:2 * BATCH] == list(range(2 * BATCH))
    assert rows[2 * BATCH:] == list(range(N_CELLS)) * 2


@pytest.mark.parametrize("output", ["dense", "csr", "padded"])
def test_batches_kept_by_the_caller_stay_intact(store, output):
    """Batches share DALI's output buffers (no copy): later batches must not overwrite them."""
    with make(store, output=output, prefetch=2) as loader:
        kept, copies = [], []
        for _ in range(2):
            for batch in loader:
                kept.append(batch)
                copies.append(to_host(batch))
    assert_same_stream([to_host(b) for b in kept], copies)
