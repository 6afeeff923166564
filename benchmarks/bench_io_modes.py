"""How the I/O layer fetches local files, measured: the choice behind its default.

The same biodali reader contender (`contenders/biodali_reader.py`) with `BIODALI_IO_MODE` set
to each of the layer's ways of fetching local shard files (csrc/engine/io/stored_file.h):

- ``map``  (default): the next window's ranges are brought into the page cache ahead of the
  decoders by the I/O threads (``posix_fadvise(WILLNEED)``, then ``mincore`` and a 1-byte
  ``pread`` per page still missing to wait for it); decoders read the mapped pages.
- ``read``: the I/O threads ``pread`` each range into a buffer of the reader (what a remote
  store does); decoders read the buffers.
- ``lazy``: views of the mapping handed out at once; decoders fault the pages in themselves
  (what the reader did before the I/O layer: one or two synchronous faults in flight).

With ``--baseline-pythonpath DIR`` (the ``python/`` folder of a checkout of an earlier commit,
its plugin built there), a mode ``base`` runs that build instead: e.g. the reader before the
I/O layer, to show warm reading did not slow down.

For each run, config and mode, cold (the collection's pages dropped with
``posix_fadvise(DONTNEED)`` right before the process) and warm (the collection read once right
before), modes interleaved; median of ``--runs``. Writes ``results/io-modes-<stamp>.json`` and
``results/io-modes-latest.md``.

    .venv/bin/python benchmarks/bench_io_modes.py --runs 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "contenders"))
import _common  # noqa: E402

MODES = ("map", "read", "lazy")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="/opt/benchdata/expr-1m-annbatch.zarr")
    p.add_argument("--configs", default="512x32,32x256")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--states", default="cold,warm")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--cells", type=int, default=300_000)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--baseline-pythonpath", default=None,
                   help="python/ folder of an earlier checkout with its plugin built: mode 'base'")
    p.add_argument("--out", default=str(HERE / "results"))
    return p.parse_args(argv)


def run_one(args, mode: str, state: str, chunk: int, preload: int, seed: int) -> dict:
    files = _common.collection_files(args.data)
    if state == "cold":
        _common.drop_page_cache(files)
    else:
        for f in files:
            with open(f, "rb") as fh:
                while fh.read(16 << 20):
                    pass
    cmd = [sys.executable, str(HERE / "contenders" / "biodali_reader.py"), "--data", args.data,
           "--chunk-size", str(chunk), "--preload-nchunks", str(preload), "--batch-size",
           str(args.batch_size), "--cells", str(args.cells), "--warmup-batches", "4", "--seed", str(seed)]
    env = dict(os.environ, BIODALI_IO_MODE=mode)
    if mode == "base":
        if not args.baseline_pythonpath:
            raise SystemExit("mode 'base' needs --baseline-pythonpath")
        env.pop("BIODALI_IO_MODE")
        env["PYTHONPATH"] = args.baseline_pythonpath
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(f"{mode} {state} {chunk}x{preload} failed:\n{out.stderr[-3000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res.update(mode=mode, state=state, config=f"{chunk}x{preload}")
    print(f"  {state:4s} {mode:4s} {chunk}x{preload}: {res['cells_per_s']:,.0f} cells/s, "
          f"peak RSS {res['peak_rss_bytes'] / 2**30:.2f} GiB", file=sys.stderr, flush=True)
    return res


def main(argv=None) -> int:
    args = parse_args(argv)
    configs = [tuple(int(v) for v in c.split("x")) for c in args.configs.split(",")]
    modes, states = args.modes.split(","), args.states.split(",")
    runs = []
    for r in range(args.runs):
        for chunk, preload in configs:
            for state in states:
                # rotate which mode goes first
                for mode in modes[r % len(modes):] + modes[:r % len(modes)]:
                    runs.append(run_one(args, mode, state, chunk, preload, seed=r))
    stamp = time.strftime("%Y%m%d-%H%M")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# I/O modes: {args.data}, batch {args.batch_size}, {args.cells:,} cells per run, "
             f"median of {args.runs} (`{' '.join(sys.argv)}`)", "",
             "| config | page cache | " + " | ".join(f"{m} cells/s" for m in modes) + " | peak RSS (" + ", ".join(modes) + ") |",
             "|---|---|" + "---:|" * len(modes) + "---|"]
    for chunk, preload in configs:
        for state in states:
            cells, rss = [], []
            for mode in modes:
                sel = [x for x in runs if x["mode"] == mode and x["state"] == state and x["config"] == f"{chunk}x{preload}"]
                cells.append(statistics.median(x["cells_per_s"] for x in sel))
                rss.append(statistics.median(x["peak_rss_bytes"] for x in sel) / 2**30)
            lines.append(f"| {chunk} x {preload} | {state} | " + " | ".join(f"{c:,.0f}" for c in cells)
                         + " | " + " / ".join(f"{v:.2f}" for v in rss) + " GiB |")
    md = "\n".join(lines) + "\n"
    base_commit = None
    if args.baseline_pythonpath:
        base_commit = subprocess.run(["git", "-C", args.baseline_pythonpath, "rev-parse", "HEAD"],
                                     capture_output=True, text=True).stdout.strip() or None
        md += f"\nbase: the reader at commit {base_commit} (`{args.baseline_pythonpath}`).\n"
    commit = subprocess.run(["git", "-C", str(HERE), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    md += f"Other modes: commit {commit}. Machine: {os.cpu_count()} cores.\n"
    (out / f"io-modes-{stamp}.json").write_text(json.dumps(
        {"runs": runs, "argv": sys.argv, "commit": commit, "base_commit": base_commit}, indent=1))
    (out / "io-modes-latest.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
