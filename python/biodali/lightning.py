"""Lightning wrapper around biodali.torch.ExpressionLoader (optional dependency: ``lightning``, or
the older ``pytorch_lightning``; imported only when ExpressionDataModule is first used).

    from biodali.lightning import ExpressionDataModule
    data = ExpressionDataModule("train.zarr", batch_size=4096, val_path="val.zarr",
                                obs_columns=["cell_type"], genes=hvg)
    trainer.fit(model, datamodule=data)

The loaders are built in the ``*_dataloader()`` hooks, which Lightning calls after it has set up
torch.distributed, so each rank reads its own shard. Lightning (2.x) treats any object with
``state_dict()``/``load_state_dict()`` as a stateful iterable and keeps its state in checkpoints;
ExpressionLoader is one (not tested here: Lightning is not in requirements.txt).
"""
from __future__ import annotations

import warnings


def _lightning():
    try:
        import lightning as L

        return L
    except ImportError:
        try:
            import pytorch_lightning as L

            return L
        except ImportError:
            raise ImportError("biodali.lightning needs Lightning: pip install lightning") from None


class _WholePasses:
    """An evaluation loader whose every iter() is one whole epoch: Lightning's sanity check
    reads a few validation batches and stops, and the loader would otherwise go on from there."""

    def __init__(self, loader):
        self.loader = loader

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        if self.loader.batch_in_epoch:
            with warnings.catch_warnings():  # reading the rest of a pass, expected here
                warnings.simplefilter("ignore")
                self.loader.set_epoch(self.loader.epoch + 1)
        return iter(self.loader)

    def close(self):
        self.loader.close()


def _build_datamodule_class():
    L = _lightning()

    class ExpressionDataModule(L.LightningDataModule):
        """Train (shuffled) / validation / test (in order) ExpressionLoaders for Lightning.

        loader_kwargs go to every ExpressionLoader (obs_columns, genes, transform, output,
        device, seed, chunk_size, ...); val_kwargs override them for validation and test."""

        def __init__(self, train_path, batch_size: int, val_path=None, test_path=None,
                     val_kwargs: dict | None = None, **loader_kwargs):
            super().__init__()
            self.train_path, self.val_path, self.test_path = train_path, val_path, test_path
            self.batch_size = batch_size
            self.loader_kwargs = loader_kwargs
            self.val_kwargs = {"shuffle": False, **(val_kwargs or {})}
            self._loaders = {}

        def _loader(self, stage, path, overrides):
            from biodali.torch import ExpressionLoader

            if stage not in self._loaders:
                loader = ExpressionLoader(path, self.batch_size, **{**self.loader_kwargs, **overrides})
                self._loaders[stage] = loader if stage == "train" else _WholePasses(loader)
            return self._loaders[stage]

        def train_dataloader(self):
            return self._loader("train", self.train_path, {})

        def val_dataloader(self):
            return self._loader("val", self.val_path, self.val_kwargs) if self.val_path else []

        def test_dataloader(self):
            return self._loader("test", self.test_path, self.val_kwargs) if self.test_path else []

        def teardown(self, stage=None):
            for loader in self._loaders.values():
                loader.close()
            self._loaders.clear()

    return ExpressionDataModule


def __getattr__(name):
    if name == "ExpressionDataModule":
        cls = _build_datamodule_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
