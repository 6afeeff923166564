"""Train a cell-type classifier on single-cell expression streamed by biodali (the main job of
`make demo`).

    python examples/train_cell_type.py                            # CPU (GPU when there is one)
    torchrun --nproc_per_node=2 examples/train_cell_type.py       # DDP: gloo on CPU, nccl on GPU

On first run it writes a synthetic 10x-like collection (200,000 cells x 36,601 genes, annbatch's
layout, cached in ~/.cache/biodali/demo); its dataset_0 (181,000 cells) is the training split and
dataset_1 (19,000 other cells of the same synthetic tissue) the validation split. The model is an
MLP on log-normalized expression (scanpy's normalize_total + log1p, computed in the DALI
pipeline) of the 2,000 genes whose log expression varies most. Each epoch shows a progress bar
with cells/s and the share of the time spent waiting for data, then validation accuracy (chance
is the frequency of the most common of the 50 cell types, ~6%).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

import biodali.torch as bt
from biodali.gene_stats import highly_variable_genes
from biodali.stores import expand_store_paths


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-cells", type=int, default=200_000, help="synthetic cells to generate")
    parser.add_argument("--data-dir", type=Path, default=Path("~/.cache/biodali/demo").expanduser())
    parser.add_argument("--n-genes", type=int, default=2000, help="most variable genes used as input")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1024, help="cells per step on each rank")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=None, help="stop each epoch after this many steps")
    return parser.parse_args()


def setup_distributed(device: str) -> tuple[int, int, torch.device]:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; without it this is a single process."""
    use_cuda = device == "cuda" or (device == "auto" and bt.cuda_usable())
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if use_cuda:
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group("nccl" if use_cuda else "gloo")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    # ranks on one machine share its cores: torch's intra-op threads + the loader's threads
    torch.set_num_threads(max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    return rank, world, torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")


def on_rank0_then_shared(rank: int, make):
    """Runs make() on rank 0 only (data generation, gene selection) and gives its result to all."""
    box = [make() if rank == 0 else None]
    if dist.is_initialized():
        dist.broadcast_object_list(box, src=0)
    return box[0]


def ensure_collection(data_dir: Path, n_cells: int, seed: int = 0) -> list[str]:
    """The dataset_k groups of a cached synthetic annbatch collection, written on first use.

    annbatch's layout puts 181,000 randomly chosen cells in each dataset_k (the same file as
    `biodali demo` writes); smaller runs are split in two halves so that there is a validation
    part. The cell-type profiles derive from `seed`, so every part shows the same 50 types."""
    from biodali import synth

    n_datasets = None if n_cells > synth.ANNBATCH_ROWS_PER_DATASET else 2
    suffix = "" if n_datasets is None else "-2parts"
    path = data_dir / f"expression-{n_cells}-seed{seed}{suffix}.zarr"
    done = path / ".biodali-complete"
    if not done.exists():
        print(f"generating {n_cells:,} synthetic cells at {path} (once) ...", flush=True)
        start = time.perf_counter()
        synth.write_expression(path, n_cells, seed=seed, layout="annbatch", n_datasets=n_datasets,
                               jobs=os.cpu_count() or 1, overwrite=True)
        done.touch()
        print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)
    return expand_store_paths(str(path))


def choose_genes(train_paths: list[str], data_dir: Path, n_genes: int) -> list[int]:
    """The n_genes columns with the largest variance of log1p-normalized expression over 20,000
    training cells (one sparse pass, a few seconds), cached next to the data."""
    cache = data_dir / f"{Path(train_paths[0]).parent.name}.hvg{n_genes}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    genes = highly_variable_genes(train_paths, n_genes, max_cells=20_000)
    cache.write_text(json.dumps(genes))
    return genes


class MLP(torch.nn.Module):
    def __init__(self, n_in: int, hidden: int, n_out: int):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(n_in, hidden), torch.nn.ReLU(), torch.nn.Dropout(0.1),
            torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
            torch.nn.Linear(hidden, n_out))

    def forward(self, x):
        return self.net(x)


def train_epoch(model, optimizer, loader, epoch: int, args, show: bool) -> dict:
    """One pass; returns cells, seconds, seconds spent waiting for the loader, last loss."""
    model.train()
    steps = min(len(loader), args.max_steps or len(loader))
    bar = tqdm(total=steps, desc=f"epoch {epoch}", unit="step", disable=not show, dynamic_ncols=True)
    cells = 0
    wait = 0.0
    loss = torch.zeros(())
    start = tick = time.perf_counter()
    for step, batch in enumerate(loader):
        got = time.perf_counter()
        wait += got - tick
        logits = model(batch["X"])
        loss = torch.nn.functional.cross_entropy(logits, batch["cell_type"].long())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        cells += len(batch["cell_type"])
        tick = time.perf_counter()
        elapsed = tick - start
        bar.update()
        bar.set_postfix_str(f"{cells / elapsed * loader.world_size:,.0f} cells/s, "
                            f"data wait {wait / elapsed:.0%}, loss {loss.item():.3f}")
        if step + 1 == steps:
            break
    bar.close()
    return {"cells": cells, "seconds": time.perf_counter() - start, "wait": wait, "loss": loss.item()}


@torch.no_grad()
def evaluate(model, loader, device) -> tuple[float, float]:
    """Accuracy over the whole validation split (every rank its shard, summed) and cells/s."""
    model.eval()
    counts = torch.zeros(2, dtype=torch.float64, device=device)
    start = time.perf_counter()
    for batch in loader:
        predicted = model(batch["X"]).argmax(1)
        counts[0] += (predicted == batch["cell_type"].long()).sum()
        counts[1] += len(predicted)
    seconds = time.perf_counter() - start
    if dist.is_initialized():
        dist.all_reduce(counts)  # the ranks ran side by side: all their cells in `seconds`
    return float(counts[0] / counts[1]), float(counts[1]) / seconds


def main() -> int:
    args = parse_args()
    rank, world, device = setup_distributed(args.device)
    show = rank == 0
    torch.manual_seed(args.seed)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    groups = on_rank0_then_shared(rank, lambda: ensure_collection(args.data_dir, args.n_cells))
    train_path, val_path = groups[:-1], groups[-1]  # the last dataset_k is held out
    genes = on_rank0_then_shared(rank, lambda: choose_genes(train_path, args.data_dir, args.n_genes))

    common = dict(obs_columns=["cell_type"], genes=genes, transform="log1p", device=str(device))
    train = bt.ExpressionLoader(train_path, args.batch_size, shuffle=True, seed=args.seed, **common)
    val = bt.ExpressionLoader(val_path, 4096, shuffle=False, **common)
    n_types = len(train.obs_categories("cell_type"))
    model = MLP(len(genes), args.hidden, n_types).to(device)
    if dist.is_initialized():
        model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    if show:
        print(f"{train.num_rows:,} training cells, {val.num_rows:,} validation cells, {len(genes)} genes, "
              f"{n_types} cell types; {world} rank(s) on {device}, batch {args.batch_size} per rank, "
              f"{len(train)} steps per epoch", flush=True)

    accuracy, val_speed = evaluate(model, val, device)
    if show:
        print(f"untrained: validation accuracy {accuracy:.1%} (validation pass: {val_speed:,.0f} "
              "cells/s, loader + forward pass)", flush=True)
    totals = {"cells": 0, "seconds": 0.0, "wait": 0.0}
    with train, val:
        for epoch in range(args.epochs):
            train.set_epoch(epoch)
            stats = train_epoch(model, optimizer, train, epoch, args, show)
            for key in totals:
                totals[key] += stats[key]
            accuracy, _ = evaluate(model, val, device)
            if show:
                print(f"epoch {epoch}: {stats['cells'] * world / stats['seconds']:,.0f} cells/s, "
                      f"data wait {stats['wait'] / stats['seconds']:.0%} of the step time, "
                      f"loss {stats['loss']:.3f}, validation accuracy {accuracy:.1%}", flush=True)
    if show:
        print(f"trained on {totals['cells'] * world:,} cells in {totals['seconds']:.0f} s "
              f"({totals['cells'] * world / totals['seconds']:,.0f} cells/s, waiting for data "
              f"{totals['wait'] / totals['seconds']:.0%} of the time); final validation accuracy "
              f"{accuracy:.1%}", flush=True)
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
