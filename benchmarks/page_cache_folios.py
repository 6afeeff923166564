"""How the page cache holds a set of files: the share of their cached bytes in large folios.

Run as its own process (it maps the files, which would raise its caller's peak RSS):

    python benchmarks/page_cache_folios.py FILE... [--sample-mib 64]

Prints one JSON line: the cached bytes looked at and the shares of them held in folios of
>= 64 KiB and of >= 2 MiB. Mapping cached pages costs the kernel work per folio, so a cache
fragmented into 4 KiB folios (what hours of proactive reclaim and scattered re-reads leave)
makes mmap-based reading slower than a freshly read cache does. Only pages already cached are
looked at (mincore first; nothing is read from disk). Needs /proc/kpageflags (root); prints
{"error": ...} otherwise.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import struct

PAGE = os.sysconf("SC_PAGE_SIZE")
KPF_COMPOUND_TAIL = 1 << 16
PFN_MASK = (1 << 55) - 1


def folio_runs(path: str, limit: int, pagemap, kpageflags, libc) -> list[int]:
    """Sizes (in pages) of the folios holding the file's cached pages in its first `limit` bytes."""
    size = min(os.path.getsize(path), limit)
    if size == 0:
        return []
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)  # private: reads map the cache
    anchor = ctypes.c_char.from_buffer(m)
    try:
        addr = ctypes.addressof(anchor)
        npages = (size + PAGE - 1) // PAGE
        resident = (ctypes.c_ubyte * npages)()
        if libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), resident) != 0:
            raise OSError(ctypes.get_errno(), "mincore failed")
        runs, current = [], 0
        for i in range(npages):
            if not resident[i] & 1:
                if current:
                    runs.append(current)
                current = 0
                continue
            m[i * PAGE]  # map the cached page so pagemap knows its frame
            pagemap.seek((addr // PAGE + i) * 8)
            entry = struct.unpack("<Q", pagemap.read(8))[0]
            if not entry >> 63:
                continue
            kpageflags.seek((entry & PFN_MASK) * 8)
            flags = struct.unpack("<Q", kpageflags.read(8))[0]
            if flags & KPF_COMPOUND_TAIL and current:
                current += 1
            else:
                if current:
                    runs.append(current)
                current = 1
        if current:
            runs.append(current)
        return runs
    finally:
        del anchor
        m.close()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+")
    p.add_argument("--sample-mib", type=int, default=64, help="bytes looked at per file (from its start)")
    args = p.parse_args(argv)
    try:
        pagemap = open("/proc/self/pagemap", "rb", buffering=0)
        kpageflags = open("/proc/kpageflags", "rb", buffering=0)
    except OSError as e:
        return {"error": f"cannot read page flags: {e}"}
    libc = ctypes.CDLL(None, use_errno=True)
    runs = []
    for path in args.files:
        runs += folio_runs(path, args.sample_mib << 20, pagemap, kpageflags, libc)
    pages = sum(runs)
    large = sum(r for r in runs if r * PAGE >= 64 << 10)
    huge = sum(r for r in runs if r * PAGE >= 2 << 20)
    return {"files": len(args.files), "cached_bytes_sampled": pages * PAGE,
            "share_in_folios_ge_64k": large / pages if pages else None,
            "share_in_folios_ge_2m": huge / pages if pages else None}


if __name__ == "__main__":
    print(json.dumps(main()))
