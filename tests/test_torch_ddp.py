"""ExpressionLoader under torchrun: 2 processes, gloo, DistributedDataParallel (tests/ddp_worker.py).
Each epoch the ranks' rows are disjoint, cover the store (without drop_last) and come in the
same number of batches; uneven shards (301 rows over 2 ranks) must not hang DDP."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loader_utils import N_CELLS, write_anndata_store

WORKER = Path(__file__).with_name("ddp_worker.py")
BATCH = 32
EPOCHS = 3
TIMEOUT_S = 240  # a hung all-reduce ends here instead of stalling the suite


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_anndata_store(tmp_path_factory.mktemp("torch_ddp"))


def run_ranks(store, out, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(WORKER), store, str(out), "--batch-size", str(BATCH), "--epochs", str(EPOCHS), *extra]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the DDP run did not finish in {TIMEOUT_S} s (a rank waiting for another?):\n"
                    f"{(exc.stderr or b'')[-3000:]}")
    assert done.returncode == 0, done.stderr[-5000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.parametrize("drop_last", [False, True])
def test_two_rank_ddp_shards(store, tmp_path, drop_last):
    ranks = run_ranks(store, tmp_path, *(["--drop-last"] if drop_last else []))
    assert all(r["world_size"] == 2 for r in ranks)
    expected_batches = (N_CELLS // 2) // BATCH if drop_last else math.ceil(math.ceil(N_CELLS / 2) / BATCH)
    previous = None
    for epoch in range(EPOCHS):
        parts = [r["epochs"][epoch] for r in ranks]
        assert [p["batches"] for p in parts] == [expected_batches] * 2 == [p["len"] for p in parts]
        a, b = (set(p["rows"]) for p in parts)
        assert len(a) == len(parts[0]["rows"]) and len(b) == len(parts[1]["rows"])
        assert not a & b  # disjoint
        if drop_last:
            assert len(a) == len(b) == expected_batches * BATCH
        else:
            assert a | b == set(range(N_CELLS))  # covering, the one-row padding removed
            assert {len(a), len(b)} == {N_CELLS // 2, N_CELLS // 2 + 1}  # uneven shards
        if previous is not None:
            assert a != previous  # shards move every epoch
        previous = a
