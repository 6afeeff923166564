"""ExpressionLoader: fn.biodali.readers.anndata + expression transforms in one DALI pipeline,
iterated through DALI's DALIGenericIterator, with the habits of a torch DataLoader (len, one
epoch per iter(), dict batches on the training device) plus what DataLoader lacks: exact
mid-epoch resume and equal-length disjoint shards under DDP.

Epochs and shards. The reader always runs with ``pad_last_batch=True`` and the iterator with
``LastBatchPolicy.PARTIAL``: every rank reads ``ceil(ceil(N / world_size) / batch_size)`` batches
per epoch (the same number on every rank, so DDP's collectives never wait for a rank that ran
out), and the one-row padding of the smaller shards is cut off the last batch, so each epoch the
ranks' rows are disjoint and cover the N rows exactly. With ``drop_last=True`` every rank yields
``floor(floor(N / world_size) / batch_size)`` full batches and reads and discards the rest of
its shard (DALI's own DROP policy is not used: with padding it leaves a batch behind when the
smallest shard is a multiple of the batch size, and the next epoch starts with it). Shards move
every epoch (the reader's default, ``stick_to_shard=False``): a rank sees other rows each epoch.
"""
from __future__ import annotations

import math
import os
import warnings
from typing import Iterator, Sequence

import torch

from . import transforms as tf

STATE_FORMAT = "biodali.torch.ExpressionLoader/1"
_READER = "reader"
_ORPHANS: list = []  # pipelines of loaders inherited through fork: never destroyed in the child


class ExpressionLoader:
    """Shuffled batches of cells from AnnData zarr stores / annbatch collections as torch tensors.

    Each batch is a dict: ``X`` (dense [B, G] in `dtype`; a ``torch.sparse_csr_tensor`` for
    output="csr"), or for output="padded" ``values``/``indices`` padded with 0 to the longest row
    of the batch plus ``lengths``; one tensor per obs column (categorical: int32 codes into
    ``obs_categories(column)``); ``row_index`` (int64 position in the concatenation of `path`)
    when `return_row_index`. transform: None (raw counts), "log1p" (scanpy's normalize_total +
    log1p), "log1p+scale" / ``Log1pScale(...)``, "rank_tokens" / ``RankTokens(...)`` (keys
    ``tokens``, ``lengths``), or a callable ``f(values, indices)`` that builds DALI nodes.
    genes: names (through the store's var index) or column ids, selected after normalization.

    device "auto": the GPU when torch and DALI both see one, else the CPU pipeline. rank /
    world_size: from torch.distributed when it is initialized, else 0 / 1. num_threads: DALI's
    CPU threads and the reader's I/O threads, default the cores of this process divided by
    LOCAL_WORLD_SIZE. prefetch: batches the pipeline computes ahead (DALI's
    prefetch_queue_depth). io_depth: read requests the reader keeps in flight (its I/O threads,
    see the reader's ``io_depth``). Use it from the process that created it (it runs its own threads; a
    forked DataLoader worker gets an error), and close() it or use it as a context manager.
    """

    def __init__(self, path, batch_size: int, obs_columns: Sequence[str] = (), genes=None,
                 transform="log1p", output: str = "dense", device: str = "auto", shuffle: bool = True,
                 seed: int = 0, chunk_size: int = 512, preload_chunks: int = 32, drop_last: bool = False,
                 num_threads: int | None = None, prefetch: int = 1, return_row_index: bool = False,
                 rank: int | None = None, world_size: int | None = None, target_sum: float = 1e4,
                 dtype: str = "float32", array: str = "X", io_depth: int = 16):
        import biodali  # noqa: F401  (loads the plugin before any pipeline is defined)
        from biodali.expression import gene_columns, n_features

        self._pid = os.getpid()
        self._pipe = self._iterator = None
        self._closed = False
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if int(prefetch) < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        self.paths = [os.fspath(p) for p in ([path] if isinstance(path, (str, os.PathLike)) else path)]
        self.batch_size = int(batch_size)
        self.obs_columns = list(obs_columns)
        clash = [c for c in self.obs_columns if c in tf.RESERVED_KEYS]
        if clash:
            raise ValueError(f"obs columns {clash} collide with batch keys {tf.RESERVED_KEYS}")
        self.rank, self.world_size = _distributed_position(rank, world_size)
        self.device, self._device_id = _resolve_device(device)
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.chunk_size, self.preload_chunks = int(chunk_size), int(preload_chunks)
        self.return_row_index = bool(return_row_index)
        self.array = array
        self._num_threads = int(num_threads) if num_threads else _threads_per_rank()
        self._prefetch = int(prefetch)
        self._io_depth = int(io_depth)
        if self._io_depth < 1:
            raise ValueError(f"io_depth must be >= 1, got {io_depth}")
        columns = gene_columns(genes, self.paths, array) if genes is not None else None
        self._plan = tf.resolve(transform, output, dtype, columns, n_features(self.paths, array),
                                float(target_sum), self.paths, array)
        self._config = self._fingerprint(transform, output, dtype, columns, target_sum)
        self._epoch = self._batch = 0
        self._generation = 0  # bumped by iter() and load_state_dict(): older generators stop
        self._open(checkpoint=None)

    # --- sizes -------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Batches per epoch on this rank (the same on every rank)."""
        return self._num_batches

    @property
    def epoch(self) -> int:
        """The epoch the next batch belongs to."""
        return self._epoch

    @property
    def batch_in_epoch(self) -> int:
        """Batches of the current epoch already delivered."""
        return self._batch

    @property
    def num_rows(self) -> int:
        """Rows (cells) in the store(s), all ranks together."""
        return self._num_rows

    @property
    def n_columns(self) -> int:
        """Width of dense/csr X: len(genes), or the store's number of columns."""
        return self._plan.n_columns

    def obs_categories(self, column: str) -> list[str]:
        """The categories that the int32 codes of categorical obs `column` index into."""
        from biodali.stores import obs_categories

        return obs_categories(self.paths, column)

    # --- iteration ---------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict]:
        """The rest of the current epoch: a full epoch unless the previous one was left early."""
        self._check_usable()
        self._generation += 1
        return self._epoch_batches(self._generation)

    def _epoch_batches(self, generation: int) -> Iterator[dict]:
        while generation == self._generation:
            self._check_usable()
            batch = self._next_dali_batch()
            batch = tf.finish_batch(self._plan, batch)
            done = self._batch == self._num_batches
            if done:  # roll over now, so that state_dict() taken after this batch is "next epoch"
                self._finish_epoch()
            yield batch
            if done:
                return

    def _next_dali_batch(self) -> dict:
        try:
            batch = next(self._iterator)[0]
        except StopIteration:  # the counts above are DALI's; a mismatch is a bug, not an epoch end
            raise RuntimeError(f"biodali: the DALI iterator ended after {self._batch} of "
                               f"{self._num_batches} batches of epoch {self._epoch}") from None
        self._batch += 1
        return batch

    def _finish_epoch(self) -> None:
        for _ in range(self._reader_batches - self._num_batches):  # drop_last: rest of the shard
            next(self._iterator)
        self._iterator.reset()
        self._epoch += 1
        self._batch = 0

    def set_epoch(self, epoch: int) -> None:
        """Checks that the next batches belong to `epoch` (DALI advances epochs by itself, one
        per pass, like DistributedSampler after set_epoch(e) for e = 0, 1, ...).

        A later epoch is reached by reading and discarding the batches in between (the same
        stream as if they had been used); an earlier one cannot be, and raises ValueError (keep
        a state_dict() to go back)."""
        self._check_usable()
        epoch = int(epoch)
        if epoch < self._epoch:
            raise ValueError(f"the loader is at epoch {self._epoch} (batch {self._batch}); it cannot "
                             f"go back to epoch {epoch}: restore a state_dict() taken then instead")
        if epoch > self._epoch:
            warnings.warn(f"set_epoch({epoch}): reading and discarding the batches from epoch "
                          f"{self._epoch} batch {self._batch} on", stacklevel=2)
            self._generation += 1
            while self._epoch < epoch:
                self._next_dali_batch()
                if self._batch == self._num_batches:
                    self._finish_epoch()

    # --- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Position (epoch, batch in epoch) + DALI's pipeline checkpoint. Restoring it into a
        loader built with the same arguments yields exactly the batches this one would yield
        next. Under DDP each rank has its own state (its shard): save one per rank."""
        self._check_usable()
        return {"format": STATE_FORMAT, "epoch": self._epoch, "batch": self._batch,
                "config": dict(self._config), "dali_checkpoint": self._iterator.checkpoints()[0]}

    def load_state_dict(self, state: dict) -> None:
        """Rebuilds the pipeline from `state` (from state_dict() of a loader with the same
        arguments, rank and world size included); iteration continues where it stopped."""
        self._check_usable()
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"not an ExpressionLoader state (expected format {STATE_FORMAT!r})")
        differing = {k: (state["config"].get(k), v) for k, v in self._config.items()
                     if state["config"].get(k) != v}
        if differing:
            shown = "; ".join(f"{k}: saved {a!r}, here {b!r}" for k, (a, b) in differing.items())
            raise ValueError(f"the state was saved by a loader built differently ({shown})")
        self._close_pipeline()
        self._open(checkpoint=state["dali_checkpoint"])
        self._epoch, self._batch = int(state["epoch"]), int(state["batch"])
        self._generation += 1

    # --- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        """Stops the pipeline and its threads (idempotent). Later use raises RuntimeError."""
        self._close_pipeline()
        self._closed = True

    def __enter__(self) -> "ExpressionLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001  (interpreter shutdown: modules may be gone)
            pass

    def _check_usable(self) -> None:
        if os.getpid() != self._pid:
            raise RuntimeError(
                f"biodali.torch.ExpressionLoader was created in process {self._pid} and cannot run "
                f"in process {os.getpid()} (a forked child, e.g. a torch DataLoader worker): its "
                "DALI pipeline threads do not survive fork. Iterate the loader in the process that "
                "built it; it reads and decodes on its own threads, so no DataLoader workers are needed.")
        if self._closed:
            raise RuntimeError("this ExpressionLoader is closed")

    def _close_pipeline(self) -> None:
        pipe, self._pipe, self._iterator = self._pipe, None, None
        if pipe is None:
            return
        if os.getpid() != self._pid:  # a fork's copy: tearing it down would wait on threads that
            _ORPHANS.append(pipe)     # only exist in the parent
            return
        pipe._shutdown()

    # --- building --------------------------------------------------------------------------------

    def _open(self, checkpoint) -> None:
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        from .iterator import RaggedIterator

        _register_uint16()
        pipe, names = self._define_pipeline(checkpoint)
        self._pipe = pipe
        ragged = tf.ragged_keys(self._plan)
        kwargs = dict(reader_name=_READER, last_batch_policy=LastBatchPolicy.PARTIAL)
        self._iterator = (RaggedIterator(pipe, names, ragged, **kwargs) if ragged
                          else DALIGenericIterator(pipe, names, **kwargs))
        meta = pipe.reader_meta(_READER)
        self._num_rows = int(meta["epoch_size"])
        if self._num_rows < self.world_size:
            raise ValueError(f"{self._num_rows} rows cannot be split over {self.world_size} ranks")
        self._reader_batches = math.ceil(meta["epoch_size_padded"] // self.world_size / self.batch_size)
        self._num_batches = (self._num_rows // self.world_size // self.batch_size if self.drop_last
                             else self._reader_batches)
        if self._num_batches == 0:
            raise ValueError(f"drop_last=True with batch_size {self.batch_size} leaves no batch: the "
                             f"smallest shard has {self._num_rows // self.world_size} rows")

    def _define_pipeline(self, checkpoint):
        from nvidia.dali import fn, pipeline_def

        on_gpu = self._device_id is not None
        plan, obs = self._plan, self.obs_columns
        names: list[str] = []  # batch keys, in output order (known once the graph is built)

        @pipeline_def(batch_size=self.batch_size, num_threads=self._num_threads,
                      device_id=self._device_id, prefetch_queue_depth=self._prefetch,
                      enable_checkpointing=True, seed=self.seed, exec_dynamic=True)
        def pipeline():
            outs = fn.biodali.readers.anndata(
                path=self.paths, array=self.array, obs_columns=obs,
                return_row_index=self.return_row_index, random_shuffle=self.shuffle, seed=self.seed,
                chunk_size=self.chunk_size, preload_chunks=self.preload_chunks,
                num_io_threads=self._num_threads, io_depth=self._io_depth, shard_id=self.rank,
                num_shards=self.world_size, pad_last_batch=True, name=_READER)
            values, indices = outs[0], outs[1]
            named = tf.graph_outputs(plan, values, indices, on_gpu)
            extra = dict(zip(obs, outs[2:2 + len(obs)]))
            if self.return_row_index:
                extra["row_index"] = outs[-1]
            clash = [k for k in extra if k in named]
            if clash:
                raise ValueError(f"batch keys {clash} are produced twice (transform and obs/row index)")
            if on_gpu:  # the whole batch on the training device
                extra = {k: v.gpu() for k, v in extra.items()}
            named.update(extra)
            names.extend(named)
            return tuple(named.values())

        pipe = pipeline(checkpoint=checkpoint) if checkpoint is not None else pipeline()
        return pipe, names

    def _fingerprint(self, transform, output, dtype, columns, target_sum) -> dict:
        """What must match between a saved state and the loader restoring it."""
        name = transform if transform is None or isinstance(transform, str) else type(transform).__name__
        return {"paths": list(self.paths), "array": self.array, "batch_size": self.batch_size,
                "shuffle": self.shuffle, "seed": self.seed, "chunk_size": self.chunk_size,
                "preload_chunks": self.preload_chunks, "drop_last": self.drop_last,
                "rank": self.rank, "world_size": self.world_size, "obs_columns": list(self.obs_columns),
                "genes": columns, "transform": name, "output": output, "dtype": dtype,
                "target_sum": float(target_sum), "return_row_index": self.return_row_index}


# --- helpers -------------------------------------------------------------------------------------

def _distributed_position(rank, world_size) -> tuple[int, int]:
    if (rank is None) != (world_size is None):
        raise ValueError("pass both rank and world_size, or neither")
    if rank is None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            rank, world_size = dist.get_rank(), dist.get_world_size()
        else:
            rank, world_size = 0, 1
    rank, world_size = int(rank), int(world_size)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
    return rank, world_size


def cuda_usable() -> bool:
    """torch and DALI both see a CUDA device."""
    if not torch.cuda.is_available():
        return False
    try:
        from nvidia.dali import backend

        return int(backend.GetCUDADeviceCount()) > 0
    except Exception:  # noqa: BLE001  (no driver: DALI reports it as an error on some versions)
        return False


def _resolve_device(device) -> tuple[torch.device, int | None]:
    """(torch device of the batches, DALI device_id: None for a CPU-only pipeline)."""
    if device == "auto":
        device = "cuda" if cuda_usable() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is not None and dev.type == "cpu":
        return dev, None
    if dev is None or dev.type != "cuda":
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    if not cuda_usable():
        raise RuntimeError(f"device={device!r}, but no CUDA device is usable here (torch: "
                           f"{torch.cuda.is_available()}); use device='cpu' or 'auto'")
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    return torch.device("cuda", index), index


def _threads_per_rank() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def _register_uint16() -> None:
    """DALIGenericIterator maps DALI dtypes to torch through a dict that lacks uint16, which
    densify uses to carry bfloat16 bit patterns; torch has had uint16 since 2.3."""
    from nvidia.dali import types
    from nvidia.dali.plugin.pytorch import torch_utils

    torch_utils.to_torch_type.setdefault(types.DALIDataType.UINT16, torch.uint16)
