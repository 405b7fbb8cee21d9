"""
Mixed clients on one raw view, checked against a model, interleaved at random, with fsyncs:
- an O_DIRECT descriptor: aligned writes and reads, the transport's synchronous write path;
- a buffered read-write one: unaligned writes and reads, the merger's deferred path (on a
  kernel with DIRECT_IO_ALLOW_MMAP the mount opens writable handles FOPEN_DIRECT_IO);
- a read-only one, which keeps the kernel's page cache and readahead: its cached pages must
  never outlive a write made through another descriptor;
- a shared writable mmap of the buffered descriptor: its dirty pages reach the image through
  the kernel's writeback, and must be seen by reads of every other descriptor.
Every read must equal the model; at the end the model is written to MIRROR for qemu-img compare.

usage: mixed-io.py VIEW MIRROR SEED OPS
"""
import mmap
import os
import random
import sys

view, mirror, seed, ops = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
size = os.stat(view).st_size
PAGE = 4096

fd_direct = os.open(view, os.O_RDWR | os.O_DIRECT)
fd_buffered = os.open(view, os.O_RDWR)
fd_readonly = os.open(view, os.O_RDONLY)
mapped = mmap.mmap(fd_buffered, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
model = bytearray(size)
# The starting content, read through the view itself.
with open(view, "rb") as f:
    f.readinto(model)
aligned = mmap.mmap(-1, 256 * 1024)  # page-aligned memory for O_DIRECT

def fail(msg):
    print(msg, file=sys.stderr)
    sys.exit(1)

def region():
    # Half the ops in a hot MiB so the two clients keep hitting the same pages.
    if rng.random() < 0.5:
        return 0, min(size, 1 << 20)
    return 0, size

def span(lo, hi, unit):
    """A length (multiple of unit) and an offset (aligned to unit) inside [lo, hi)."""
    if unit == 1:
        n = rng.randint(1, 70000)
        return n, rng.randrange(lo, max(lo + 1, hi - n))
    n = unit * rng.randint(1, 16)
    return n, (rng.randrange(lo, hi - n + 1, unit) if hi - lo > n else 0)

def check(i, what, off, got):
    if got != model[off:off + len(got)]:
        fail(f"op {i}: {what} read at {off}+{len(got)} differs from the model")

for i in range(ops):
    op = rng.random()
    lo, hi = region()
    if op < 0.28:  # O_DIRECT write, whole pages
        n, off = span(lo, hi, PAGE)
        data = bytes([rng.randrange(1, 256)]) * n if rng.random() < 0.3 else rng.randbytes(n)
        aligned[:n] = data
        if os.pwrite(fd_direct, memoryview(aligned)[:n], off) != n:
            fail(f"op {i}: short O_DIRECT write at {off}")
        model[off:off + n] = data
    elif op < 0.5:  # buffered write, any alignment
        n, off = span(lo, hi, 1)
        data = rng.randbytes(n) if rng.random() < 0.8 else bytes(n)
        if os.pwrite(fd_buffered, data, off) != n:
            fail(f"op {i}: short buffered write at {off}")
        model[off:off + n] = data
    elif op < 0.58:  # a store through the shared mapping
        n, off = span(lo, hi, 1)
        data = rng.randbytes(n)
        mapped[off:off + n] = data
        model[off:off + n] = data
    elif op < 0.68:  # O_DIRECT read
        n, off = span(lo, hi, PAGE)
        got = os.preadv(fd_direct, [memoryview(aligned)[:n]], off)
        if got != n:
            fail(f"op {i}: short O_DIRECT read at {off}")
        check(i, "O_DIRECT", off, aligned[:n])
    elif op < 0.78:  # buffered read
        n, off = span(lo, hi, 1)
        check(i, "buffered", off, os.pread(fd_buffered, n, off))
    elif op < 0.9:  # read-only descriptor: the page cache
        n, off = span(lo, hi, 1)
        check(i, "read-only", off, os.pread(fd_readonly, n, off))
    elif op < 0.96:  # a load through the shared mapping
        n, off = span(lo, hi, 1)
        check(i, "mmap", off, mapped[off:off + n])
    elif op < 0.98:
        mapped.flush()  # msync
    else:
        os.fsync(fd_direct if rng.random() < 0.5 else fd_buffered)

mapped.flush()
mapped.close()
os.fsync(fd_buffered)
os.close(fd_readonly)
os.close(fd_direct)
os.close(fd_buffered)
with open(mirror, "wb") as f:
    f.write(model)
print(f"{ops} ops ok")
