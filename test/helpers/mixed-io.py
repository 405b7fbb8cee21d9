"""
Mixed clients on one raw view, checked against a model: an O_DIRECT descriptor (aligned writes
and reads, the transport's synchronous write path) and a buffered one (unaligned writes and
reads: the merger's deferred path), interleaved at random, with fsyncs. Every read must equal
the model; at the end the model is written to MIRROR for qemu-img compare.

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

for i in range(ops):
    op = rng.random()
    lo, hi = region()
    if op < 0.35:  # O_DIRECT write, whole pages
        n = PAGE * rng.randint(1, 16)
        off = rng.randrange(lo, hi - n + 1, PAGE) if hi - lo > n else 0
        data = bytes([rng.randrange(1, 256)]) * n if rng.random() < 0.3 else rng.randbytes(n)
        aligned[:n] = data
        if os.pwrite(fd_direct, memoryview(aligned)[:n], off) != n:
            fail(f"op {i}: short O_DIRECT write at {off}")
        model[off:off + n] = data
    elif op < 0.65:  # buffered write, any alignment
        n = rng.randint(1, 70000)
        off = rng.randrange(lo, max(lo + 1, hi - n))
        data = rng.randbytes(n) if rng.random() < 0.8 else bytes(n)
        if os.pwrite(fd_buffered, data, off) != n:
            fail(f"op {i}: short buffered write at {off}")
        model[off:off + n] = data
    elif op < 0.8:  # O_DIRECT read
        n = PAGE * rng.randint(1, 16)
        off = rng.randrange(lo, hi - n + 1, PAGE) if hi - lo > n else 0
        got = os.preadv(fd_direct, [memoryview(aligned)[:n]], off)
        if got != n or aligned[:n] != model[off:off + n]:
            fail(f"op {i}: O_DIRECT read at {off}+{n} differs from the model")
    elif op < 0.97:  # buffered read
        n = rng.randint(1, 70000)
        off = rng.randrange(lo, max(lo + 1, hi - n))
        got = os.pread(fd_buffered, n, off)
        if got != model[off:off + n]:
            fail(f"op {i}: buffered read at {off}+{n} differs from the model")
    else:
        os.fsync(fd_direct if rng.random() < 0.5 else fd_buffered)

os.close(fd_direct)
os.close(fd_buffered)
with open(mirror, "wb") as f:
    f.write(model)
print(f"{ops} ops ok")
