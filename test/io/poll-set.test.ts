/** The syscalls the FUSE request loop leans on: PollSet (sync and on a worker thread), readOrErrno, syncfsAsync. */
import * as fs from 'node:fs';
import * as os from 'node:os';
import { expect, it } from 'vitest';
import { EAGAIN, EFD_NONBLOCK, POLLIN, PollSet, eventfd, eventfdWrite, readOrErrno, syncfsAsync } from '../../src/io/syscalls';

it("PollSet waits, reports revents per fd, and wakes from another thread's wait", async () => {
  const a = eventfd(0, EFD_NONBLOCK);
  const b = eventfd(0, EFD_NONBLOCK);
  try {
    const set = new PollSet([
      { fd: a, events: POLLIN },
      { fd: b, events: POLLIN },
    ]);
    expect(set.wait(0)).toBe(0);
    eventfdWrite(b, 1);
    expect(set.wait(0)).toBe(1);
    expect(set.revents(0)).toBe(0);
    expect(set.revents(1) & POLLIN).toBe(POLLIN);
    // readOrErrno: the count, then -EAGAIN (no exception) once drained.
    const buf = Buffer.alloc(8);
    expect(readOrErrno(b, buf)).toBe(8);
    expect(readOrErrno(b, buf)).toBe(-EAGAIN);
    const waiting = set.waitAsync(-1);
    setTimeout(() => eventfdWrite(a, 1), 20);
    expect(await waiting).toBe(1);
    expect(set.revents(0) & POLLIN).toBe(POLLIN);
  } finally {
    fs.closeSync(a);
    fs.closeSync(b);
  }
});

it('syncfsAsync syncs a filesystem from a worker thread', async () => {
  const fd = fs.openSync(os.tmpdir(), 'r');
  try {
    await expect(syncfsAsync(fd)).resolves.toBeUndefined();
  } finally {
    fs.closeSync(fd);
  }
  await expect(syncfsAsync(987654)).rejects.toThrow(/syncfs/);
});
