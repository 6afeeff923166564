"""One rank of the 2-process DDP run of tests/test_torch_ddp.py (started with torchrun): trains a
linear model under DistributedDataParallel (gloo) fed by ExpressionLoader for a few epochs and
writes, per epoch, the row ids this rank saw and its batch count to OUT/rank<r>.json.

A rank with more batches than another would block in DDP's gradient all-reduce; the test's
timeout turns that hang into a failure."""
import argparse
import json
import os

import torch
import torch.distributed as dist

import biodali.torch as bt


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("out")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--drop-last", action="store_true")
    args = parser.parse_args()

    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    rank = dist.get_rank()
    with bt.ExpressionLoader(args.store, args.batch_size, obs_columns=["cell_type"],
                             genes=list(range(64)), return_row_index=True, drop_last=args.drop_last,
                             num_threads=1) as loader:
        assert (loader.rank, loader.world_size) == (rank, dist.get_world_size())
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(64, 50))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        epochs = []
        for epoch in range(args.epochs):
            loader.set_epoch(epoch)
            rows, n_batches = [], 0
            for batch in loader:
                loss = torch.nn.functional.cross_entropy(model(batch["X"]), batch["cell_type"].long())
                optimizer.zero_grad()
                loss.backward()  # all-reduce across ranks: hangs if a rank has an extra batch
                optimizer.step()
                rows += batch["row_index"].tolist()
                n_batches += 1
            epochs.append({"rows": rows, "batches": n_batches, "len": len(loader)})
    with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
        json.dump({"world_size": dist.get_world_size(), "epochs": epochs}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
