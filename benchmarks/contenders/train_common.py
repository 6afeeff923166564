"""Shared by the training contenders (train_biodali.py, train_annbatch.py): the command line,
the demo's model (examples/train_cell_type.py's MLP, repeated here because the annbatch side
runs in another Python that cannot import biodali) and the timed training loop.

Protocol: each contender turns its loader into an iterator of (X dense float32 [B, G], int64
labels [B]) on the CPU; ``train`` runs --warmup-steps untimed steps, then --steps timed ones and
prints one JSON line: samples/s and the share of the time spent waiting for the next batch
(everything the loader does in the training thread, transforms included, counts as waiting).

Cold page cache (bench_train.py --page-cache cold-per-epoch): the harness drops the collection's
cached pages (posix_fadvise DONTNEED on every file) before starting the process;
``--drop-cache-per-epoch`` drops them again at the start of every later epoch of the loader, and ``--drop-every N`` also every N steps (warm-up steps counted), a stand-in for an
epoch boundary in runs shorter than an epoch. The seconds the drops take are left out of the
timed wall time and of the waiting time (they are reported as cache_drop_seconds)."""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time


def parse_args(extra=None, argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", required=True, help="annbatch DatasetCollection")
    p.add_argument("--genes-file", required=True, help=".npy of the input gene column ids")
    p.add_argument("--n-types", type=int, default=50, help="classes (cell types)")
    p.add_argument("--chunk-size", type=int, default=512)
    p.add_argument("--preload-chunks", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--drop-cache-per-epoch", action="store_true",
                   help="drop the collection's cached pages at the start of every loader epoch")
    p.add_argument("--drop-every", type=int, default=0, metavar="N",
                   help="also drop them every N steps (a simulated epoch boundary; 0: never)")
    if extra is not None:
        extra(p)
    return p.parse_args(argv)


class CacheDropper:
    """Drops the collection's cached pages; counts the drops and the seconds they took."""

    def __init__(self, data: str):
        import _common

        self._common = _common
        self.files = _common.collection_files(data)
        self.seconds = 0.0
        self.epoch_drops = 0
        self.step_drops = 0
        self.epochs_started = 0

    def drop(self, kind: str = "epoch") -> None:
        self.seconds += self._common.drop_page_cache(self.files)
        if kind == "epoch":
            self.epoch_drops += 1
        else:
            self.step_drops += 1


def make_dropper(args) -> CacheDropper | None:
    return CacheDropper(args.data) if (args.drop_cache_per_epoch or args.drop_every) else None


def epoch_start(args, dropper: CacheDropper | None) -> None:
    """Called by the contenders at the start of every epoch of their loader. The first epoch is
    left alone: the harness dropped the pages before starting the process, and a loader that
    began reading when it was built would otherwise lose what it read. A loader that prefetches
    across an epoch boundary may likewise lose the next epoch's first pages to a later drop (it
    reads them again: the drop errs against it, not for it)."""
    if dropper is None or not args.drop_cache_per_epoch:
        return
    dropper.epochs_started += 1
    if dropper.epochs_started > 1:
        dropper.drop("epoch")


def make_model(n_in: int, n_out: int, hidden: int = 256):
    """examples/train_cell_type.py's MLP."""
    import torch

    return torch.nn.Sequential(
        torch.nn.Linear(n_in, hidden), torch.nn.ReLU(), torch.nn.Dropout(0.1),
        torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, n_out))


def train(contender: str, args, batches, n_genes: int, dropper: CacheDropper | None = None,
          **extra) -> dict:
    import torch

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    model = make_model(n_genes, args.n_types)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(x, y):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    every = args.drop_every if dropper is not None else 0

    def maybe_drop(i):
        if every and i > 0 and i % every == 0:
            dropper.drop("step")

    for i in range(args.warmup_steps):
        maybe_drop(i)
        step(*next(batches))
    dropped0 = dropper.seconds if dropper is not None else 0.0
    samples, wait = 0, 0.0
    c0 = os.times()
    start = tick = time.perf_counter()
    for i in range(args.warmup_steps, args.warmup_steps + args.steps):
        maybe_drop(i)
        x, y = next(batches)
        got = time.perf_counter()
        wait += got - tick
        if x.shape != (len(y), n_genes) or x.dtype != torch.float32:
            raise TypeError(f"{contender}: batch X {tuple(x.shape)} {x.dtype}, expected [{len(y)}, {n_genes}] float32")
        loss = step(x, y)
        samples += len(y)
        tick = time.perf_counter()
    c1 = os.times()
    # Cache drops (at epoch starts inside next(batches), or before it every --drop-every steps)
    # are harness work: out of the wall time and the waiting time.
    drop_seconds = (dropper.seconds if dropper is not None else 0.0) - dropped0
    seconds = tick - start - drop_seconds
    wait -= drop_seconds
    result = {
        "contender": contender, "steps": args.steps, "samples": samples, "seconds": seconds,
        "samples_per_s": samples / seconds, "wait_seconds": wait, "wait_share": wait / seconds,
        "final_loss": float(loss), "cpu_seconds": (c1.user - c0.user) + (c1.system - c0.system),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "torch_threads": torch.get_num_threads(), "batch_size": args.batch_size,
        "chunk_size": args.chunk_size, "preload_chunks": args.preload_chunks, "seed": args.seed,
        "warmup_steps": args.warmup_steps, "n_genes": n_genes, "python": sys.version.split()[0],
        "torch": torch.__version__,
        "page_cache": "cold-per-epoch" if dropper is not None else "as the harness left it",
        "cache_drops_epoch": dropper.epoch_drops if dropper is not None else 0,
        "cache_drops_step": dropper.step_drops if dropper is not None else 0,
        "epochs_started": dropper.epochs_started if dropper is not None else None,
        "cache_drop_seconds": drop_seconds, "drop_every": args.drop_every, **extra}
    print(json.dumps(result), flush=True)
    return result
