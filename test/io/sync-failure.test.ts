/**
 * A failed fdatasync fails every later one (HostFile.syncFailure). Linux may mark the pages it
 * could not write clean, and its next fdatasync then succeeds with them never written: a flush
 * after that must not acknowledge anything. Checked on HostFile, and through an image's flush.
 */
import fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { openImage } from '../../src/image/open';
import { HostFile } from '../../src/io/host-file';
import { qemuCheck, qemuImg } from '../helpers/qemu';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-sync-failure-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
afterEach(() => vi.restoreAllMocks());

/** The next fdatasync of the process fails with EIO, as after a lost writeback; later ones succeed. */
function failNextFdatasync(): { calls: () => number } {
  const real = fs.fdatasync;
  let calls = 0;
  let failed = false;
  vi.spyOn(fs, 'fdatasync').mockImplementation((fd: number, cb: (e: NodeJS.ErrnoException | null) => void) => {
    calls++;
    if (failed) return real(fd, cb);
    failed = true;
    process.nextTick(() => cb(Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' })));
  });
  return { calls: () => calls };
}

describe('a failed fdatasync', () => {
  it('fails every later datasync of the file, without asking the kernel again', async () => {
    const p = path.join(dir, 'f');
    fs.writeFileSync(p, Buffer.alloc(4096));
    const f = await HostFile.open(p, true);
    try {
      const spy = failNextFdatasync();
      await f.write(Buffer.alloc(4096, 1), 0);
      await expect(f.datasync()).rejects.toThrow(/EIO/);
      await expect(f.datasync()).rejects.toThrow(
        /an earlier flush to the host disk failed \(fdatasync .*EIO.*\).*until the image is opened again/,
      );
      expect(spy.calls()).toBe(1);
      // Another file (another descriptor) is not affected.
      const q = path.join(dir, 'g');
      fs.writeFileSync(q, Buffer.alloc(4096));
      const g = await HostFile.open(q, true);
      await g.datasync();
      await g.close();
    } finally {
      await f.close();
    }
  });

  for (const format of ['qcow2', 'vdi'] as const) {
    it(`${format}: every later flush of the image fails; QEMU finds no corruption (leaks at most)`, async () => {
      const f = path.join(dir, `i.${format}`);
      qemuImg(['create', '-q', '-f', format, f, '16M']);
      const img = await openImage(f, { writable: true });
      try {
        await img.write(0, Buffer.alloc(1 << 20, 0x33));
        failNextFdatasync();
        await expect(img.flush()).rejects.toThrow(/EIO/);
        await img.write(2 << 20, Buffer.alloc(1 << 20, 0x44));
        await expect(img.flush()).rejects.toThrow(/an earlier flush to the host disk failed/);
      } finally {
        await img.close().catch(() => undefined); // its flush fails too
      }
      // Nothing was written after the failed barrier that it should have ordered: leaks at most.
      const check = qemuCheck(f, format);
      expect(check.json, check.output).toBeDefined();
      expect(Number(check.json!['corruptions'] ?? 0) + Number(check.json!['check-errors'] ?? 0), check.output).toBe(0);
    });
  }
});
