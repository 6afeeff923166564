"""Shared by the training contenders (train_biodali.py, train_annbatch.py): the command line,
the demo's model (examples/train_cell_type.py's MLP, repeated here because the annbatch side
runs in another Python that cannot import biodali) and the timed training loop.

Protocol: each contender turns its loader into an iterator of (X dense float32 [B, G], int64
labels [B]) on the CPU; ``train`` runs --warmup-steps untimed steps, then --steps timed ones and
prints one JSON line: samples/s and the share of the time spent waiting for the next batch
(everything the loader does in the training thread, transforms included, counts as waiting)."""
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
    if extra is not None:
        extra(p)
    return p.parse_args(argv)


def make_model(n_in: int, n_out: int, hidden: int = 256):
    """examples/train_cell_type.py's MLP."""
    import torch

    return torch.nn.Sequential(
        torch.nn.Linear(n_in, hidden), torch.nn.ReLU(), torch.nn.Dropout(0.1),
        torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, n_out))


def train(contender: str, args, batches, n_genes: int, **extra) -> dict:
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

    for _ in range(args.warmup_steps):
        step(*next(batches))
    samples, wait = 0, 0.0
    c0 = os.times()
    start = tick = time.perf_counter()
    for _ in range(args.steps):
        x, y = next(batches)
        got = time.perf_counter()
        wait += got - tick
        if x.shape != (len(y), n_genes) or x.dtype != torch.float32:
            raise TypeError(f"{contender}: batch X {tuple(x.shape)} {x.dtype}, expected [{len(y)}, {n_genes}] float32")
        loss = step(x, y)
        samples += len(y)
        tick = time.perf_counter()
    seconds = tick - start
    c1 = os.times()
    result = {
        "contender": contender, "steps": args.steps, "samples": samples, "seconds": seconds,
        "samples_per_s": samples / seconds, "wait_seconds": wait, "wait_share": wait / seconds,
        "final_loss": float(loss), "cpu_seconds": (c1.user - c0.user) + (c1.system - c0.system),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "torch_threads": torch.get_num_threads(), "batch_size": args.batch_size,
        "chunk_size": args.chunk_size, "preload_chunks": args.preload_chunks, "seed": args.seed,
        "warmup_steps": args.warmup_steps, "n_genes": n_genes, "python": sys.version.split()[0],
        "torch": torch.__version__, **extra}
    print(json.dumps(result), flush=True)
    return result
