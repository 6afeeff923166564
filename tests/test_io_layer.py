"""The I/O layer alone (csrc/engine/io): byte ranges fetched through the scheduler, coalesced,
delivered exactly (compared with the files' bytes read by Python), errors naming the file,
cancellation, and the in-flight memory cap."""
import os

import numpy as np
import pytest

from biodali import _testing

MODES = ["map", "read", "lazy"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("io")
    rng = np.random.default_rng(0)
    paths = []
    for k, size in enumerate([3 << 20, 1 << 20, 100_003]):
        path = root / f"f{k}.bin"
        path.write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        paths.append(path)
    return paths


def _drop_cache(path):
    """Evicts a file's pages (written back first: dirty pages are not dropped), so the next
    fetch of it needs real I/O."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _expected(paths, ranges):
    blobs = [p.read_bytes() for p in paths]
    return [blobs[f][o:o + n] for f, o, n in ranges]


def _random_ranges(paths, n, rng, max_len=200_000):
    sizes = [os.path.getsize(p) for p in paths]
    ranges = []
    for _ in range(n):
        f = int(rng.integers(len(paths)))
        length = int(rng.integers(0, min(max_len, sizes[f]) + 1))
        offset = int(rng.integers(0, sizes[f] - length + 1))
        ranges.append((f, offset, length))
    return ranges


@pytest.mark.parametrize("cache", ["warm", "cold"])
@pytest.mark.parametrize("mode", MODES)
def test_random_ranges_delivered_exactly(files, mode, cache):
    rng = np.random.default_rng(1)
    ranges = _random_ranges(files, 300, rng)  # overlapping, adjacent, empty: all of them
    for path in files:
        path.read_bytes() if cache == "warm" else _drop_cache(path)
    got, stats = _testing.io_fetch(files, ranges, mode=mode, depth=8)
    assert got == _expected(files, ranges)
    assert stats["ranges"] == len(ranges)
    assert stats["cancelled_requests"] == 0


def test_neighbouring_ranges_are_coalesced(files):
    # 64 adjacent 16 KiB ranges, submitted shuffled, then one far away: two requests.
    rng = np.random.default_rng(2)
    ranges = [(0, 16384 * i, 16384) for i in range(64)]
    rng.shuffle(ranges)
    ranges.append((0, 3 << 19, 1000))
    got, stats = _testing.io_fetch(files, ranges, coalesce_gap=0)
    assert got == _expected(files, ranges)
    assert stats["requests"] == 2
    assert stats["requested_nbytes"] == 64 * 16384 + 1000


def test_gap_joins_ranges_and_request_size_splits_them(files):
    # Ranges 4 KiB apart: a 4 KiB gap joins them, a 1 KiB one does not.
    ranges = [(1, 8192 * i, 4096) for i in range(32)]
    _, joined = _testing.io_fetch(files, ranges, coalesce_gap=4096)
    _, apart = _testing.io_fetch(files, ranges, coalesce_gap=1024)
    assert joined["requests"] == 1 and joined["requested_nbytes"] == 31 * 8192 + 4096
    assert apart["requests"] == 32 and apart["requested_nbytes"] == 32 * 4096
    # max_request caps how far coalescing grows a request.
    got, split = _testing.io_fetch(files, ranges, coalesce_gap=4096, max_request=8192 * 4)
    assert got == _expected(files, ranges)
    assert split["requests"] == 8


def test_ranges_of_different_files_are_not_joined(files):
    ranges = [(0, 0, 1000), (1, 1000, 1000), (2, 2000, 1000)]
    got, stats = _testing.io_fetch(files, ranges, coalesce_gap=1 << 20)
    assert got == _expected(files, ranges)
    assert stats["requests"] == 3


@pytest.mark.parametrize("mode", ["map", "read"])
def test_in_flight_bytes_stay_under_the_cap(files, mode):
    # 48 requests of 64 KiB with a 256 KiB cap, consumed one by one: at most the cap plus the
    # one request being waited for are ever in flight.
    ranges = [(0, 65536 * i, 65536) for i in range(48)]
    cap = 256 << 10
    _drop_cache(files[0])  # cached pages would need no I/O, and count nothing
    got, stats = _testing.io_fetch(files, ranges, mode=mode, coalesce_gap=0, max_request=65536,
                                   max_in_flight=cap, depth=16)
    assert got == _expected(files, ranges)
    assert stats["requests"] == 48
    assert 0 < stats["peak_in_flight_nbytes"] <= cap + 65536


def test_waiting_past_the_cap_does_not_deadlock(files):
    # A cap smaller than one request: each request still starts when waited for.
    ranges = [(0, 100_000 * i, 100_000) for i in range(20)]
    got, _ = _testing.io_fetch(files, ranges, max_in_flight=1000, max_request=100_000,
                               coalesce_gap=0, depth=4)
    assert got == _expected(files, ranges)


def test_dropping_a_batch_cancels_what_has_not_started(files):
    ranges = [(0, 65536 * i, 65536) for i in range(48)]
    _drop_cache(files[0])
    got, stats = _testing.io_fetch(files, ranges, coalesce_gap=0, max_request=65536,
                                   max_in_flight=65536, depth=1, num_waited=2)
    assert got == _expected(files, ranges[:2])
    assert stats["cancelled_requests"] > 0


@pytest.mark.parametrize("mode", MODES)
def test_range_past_the_end_names_the_file(files, mode):
    size = os.path.getsize(files[2])
    with pytest.raises(RuntimeError, match=rf"{files[2].name}.*ended at {size} bytes.*truncated"):
        _testing.io_fetch(files, [(2, size - 10, 100)], mode=mode)


def test_read_error_names_the_file():
    # /proc/self/mem at address 0 (never mapped) fails with a real EIO from the kernel.
    with pytest.raises(RuntimeError, match=r"/proc/self/mem: read failed at offset 0: Input/output error"):
        _testing.io_fetch(["/proc/self/mem"], [(0, 0, 16)], mode="read")


def test_missing_file_names_it(tmp_path):
    with pytest.raises(RuntimeError, match=r"nope\.bin: does not exist"):
        _testing.io_fetch([tmp_path / "nope.bin"], [(0, 0, 1)])


def test_remote_paths_say_they_are_not_supported_yet():
    with pytest.raises(RuntimeError, match=r"s3://bucket/a\.zarr/X/data/c/0: reading through s3:// is not supported yet"):
        _testing.io_fetch(["s3://bucket/a.zarr/X/data/c/0"], [(0, 0, 1)])




def test_cached_ranges_need_no_io_and_cold_ones_are_read(files):
    ranges = [(0, 1 << 20, 256 << 10), (0, 2 << 20, 256 << 10)]
    files[0].read_bytes()  # in the page cache now
    got, warm = _testing.io_fetch(files, ranges, coalesce_gap=0)
    assert got == _expected(files, ranges)
    assert warm["ready_requests"] == 2
    _drop_cache(files[0])
    got, cold = _testing.io_fetch(files, ranges, coalesce_gap=0)
    assert got == _expected(files, ranges)
    assert cold["ready_requests"] == 0
    # read mode always reads (into buffers of its own)
    _, read = _testing.io_fetch(files, ranges, coalesce_gap=0, mode="read")
    assert read["ready_requests"] == 0
