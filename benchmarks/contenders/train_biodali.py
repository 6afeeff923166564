"""biodali training contender: ExpressionLoader (CPU DALI pipeline: reader -> normalize_densify,
i.e. normalize_total + log1p of the gene subset, computed on DALI's threads while the model
trains) feeding the demo's MLP. Prints train_common's JSON line.

    .venv/bin/python benchmarks/contenders/train_biodali.py --data PATH --genes-file GENES.npy
"""
from __future__ import annotations

import sys
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_common  # noqa: E402


def main(argv=None) -> dict:
    args = train_common.parse_args(argv=argv)
    import numpy as np

    import biodali.torch as bt

    genes = [int(g) for g in np.load(args.genes_file)]
    loader = bt.ExpressionLoader(args.data, args.batch_size, obs_columns=["cell_type"], genes=genes,
                                 transform="log1p", device="cpu", shuffle=True, seed=args.seed,
                                 chunk_size=args.chunk_size, preload_chunks=args.preload_chunks)

    dropper = train_common.make_dropper(args)

    def batches():
        while True:  # epochs
            train_common.epoch_start(args, dropper)
            for batch in loader:
                yield batch["X"], batch["cell_type"].long()

    with loader:
        return train_common.train("biodali", args, batches(), len(genes), dropper=dropper,
                                  versions={p: version(p) for p in ("biodali", "nvidia-dali-cuda130", "numpy")})


if __name__ == "__main__":
    main()
