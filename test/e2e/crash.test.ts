/**
 * "No image corrupted, ever": the daemon is killed with SIGKILL in the middle of a write storm.
 * The image must pass `qemu-img check` (leaked clusters are allowed: the space is wasted, no data
 * harmed; corruption never), and every write that was fsync'd before the kill must read back.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { isMounted, mountFixture } from '../helpers/mount';
import { rng } from '../helpers/qemu';

const SIZE = 64 << 20;
const fx = mountFixture();

const variants = [
  { name: 'qcow2', file: 'c.qcow2', create: ['-f', 'qcow2'] },
  { name: 'qcow2 lazy_refcounts', file: 'l.qcow2', create: ['-f', 'qcow2', '-o', 'lazy_refcounts=on'] },
  { name: 'vmdk', file: 'v.vmdk', create: ['-f', 'vmdk'] },
];

describe('SIGKILL in the middle of writes', () => {
  for (const [i, v] of variants.entries()) {
    it(`${v.name}: qemu-img check finds no corruption and fsync'd data survives`, async () => {
      const image = path.join(fx.images, v.file);
      execFileSync('qemu-img', ['create', '-q', ...v.create, image, String(SIZE)]);
      const m = await fx.mount();
      const view = path.join(m.mnt, v.file + '.raw');
      const r = rng(4242 + i);
      // Durable part: distinct 64 KiB blocks, fsync'd.
      const durable: Array<{ off: number; data: Buffer }> = [];
      const fd = fs.openSync(view, 'r+');
      for (let k = 0; k < 40; k++) {
        const off = k * 1572864 + Math.floor(r() * 8) * 4096; // spread over the disk, one block per 1.5 MiB
        const data = Buffer.alloc(65536, (k % 250) + 1);
        fs.writeSync(fd, data, 0, data.length, off);
        durable.push({ off, data });
      }
      fs.fsyncSync(fd);
      // Volatile part: keep writing (allocations in flight, pending in the merger) and kill mid-way.
      // One handle, no fsync, no close: writes pile up in the merger and in cluster allocation.
      let written = 0;
      const writer = (async () => {
        const h = await fs.promises.open(view, 'r+');
        try {
          for (let k = 0; k < 100000; k++) {
            const off = Math.floor(r() * (SIZE - 300_000));
            const len = 1 + Math.floor(r() * 300_000);
            // Never over the durable blocks: they must stay exactly as fsync'd.
            if (durable.some((d) => off < d.off + d.data.length && d.off < off + len)) continue;
            try {
              await h.write(Buffer.alloc(len, (k & 0xfe) + 1), 0, len, off);
              written++;
            } catch {
              return; // the mount is gone
            }
          }
        } finally {
          // Closed here, not by the garbage collector (whose failed close on a dead mount is uncaught).
          await h.close().catch(() => undefined);
        }
      })();
      await new Promise((res) => setTimeout(res, 400 + Math.floor(r() * 400)));
      m.proc.kill('SIGKILL');
      await m.exited;
      await writer;
      expect(written).toBeGreaterThan(10);
      try {
        fs.closeSync(fd);
      } catch {
        /* ENOTCONN */
      }
      spawnSync('umount', ['-l', m.mnt]);
      expect(isMounted(m.mnt)).toBe(false);
      // No corruption (exit 2); leaks (exit 3) are allowed.
      const check = spawnSync('qemu-img', ['check', image], { encoding: 'utf8' });
      expect([0, 3], check.stdout + check.stderr).toContain(check.status);
      expect(check.stdout).not.toMatch(/ERROR/);
      // fsync'd data survived.
      const raw = path.join(fx.dir, 'after.raw');
      execFileSync('qemu-img', ['convert', '-O', 'raw', image, raw]);
      const rfd = fs.openSync(raw, 'r');
      for (const d of durable) {
        const got = Buffer.alloc(d.data.length);
        fs.readSync(rfd, got, 0, got.length, d.off);
        expect(got.equals(d.data), `fsync'd block at ${d.off} lost`).toBe(true);
      }
      fs.closeSync(rfd);
    }, 120_000);
  }
});
