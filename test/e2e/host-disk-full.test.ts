/**
 * The host disk fills up under a mount (the images folder on a 6 MiB tmpfs): the writer gets
 * ENOSPC or EIO, the daemon says why in one line per image (no stack trace) and keeps serving,
 * the image is one QEMU checks without corruption, and once there is room again the same image
 * takes the whole write.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { mountFixture, type Mounted } from '../helpers/mount';
import { qemuCheck, qemuCompare, qemuImg } from '../helpers/qemu';

const fx = mountFixture();
const MiB = 1 << 20;

function dd(args: string[]): { ok: boolean; out: string } {
  try {
    execFileSync('dd', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    return { ok: true, out: '' };
  } catch (e) {
    const err = e as { stderr?: string };
    return { ok: false, out: err.stderr ?? '' };
  }
}

describe('a full host disk under a mount', () => {
  it('fails the write with ENOSPC, says why once, keeps serving, leaves no corruption, and recovers', async () => {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=6m', 'vdiskfs-test-full', fx.images]);
    let m: Mounted | undefined;
    try {
      const image = path.join(fx.images, 't.qcow2');
      qemuImg(['create', '-q', '-f', 'qcow2', image, '64M']);
      const data = path.join(fx.dir, 'data');
      fs.writeFileSync(data, Buffer.alloc(16 * MiB, 0x5a));
      const view = path.join(fx.mnt, 't.qcow2.raw');

      m = await fx.mount();
      const full = dd([`if=${data}`, `of=${view}`, 'bs=1M', 'oflag=direct', 'conv=notrunc,fsync']);
      expect(full.ok, 'dd of 16 MiB into a 6 MiB host disk').toBe(false);
      expect(full.out).toMatch(/No space left on device|Input\/output error/);
      const log = await m.waitForLog(/t\.qcow2: (write|fsync|close \(flush\)) failed: .*(ENOSPC|no space)/i);
      expect(log).toMatch(/t\.qcow2: (write|fsync|close \(flush\)) failed: .*(ENOSPC|no space)/i);
      expect(log, 'no stack trace in the daemon log').not.toMatch(/\n\s+at /);
      // Still serving: the first MiB reads back.
      expect(dd([`if=${view}`, 'of=/dev/null', 'bs=1M', 'count=1', 'iflag=direct']).ok).toBe(true);
      await m.unmount();
      const check = qemuCheck(image);
      expect(check.json, check.output).toBeDefined();
      expect(Number(check.json!['corruptions'] ?? 0) + Number(check.json!['check-errors'] ?? 0), check.output).toBe(0);

      // Room again: the same image takes the whole write.
      execFileSync('mount', ['-o', 'remount,size=128m', fx.images]);
      m = await fx.mount();
      expect(dd([`if=${data}`, `of=${view}`, 'bs=1M', 'oflag=direct', 'conv=notrunc,fsync']).ok).toBe(true);
      await m.unmount();
      const cmp = qemuCompare(image, data);
      expect(cmp.equal, cmp.output).toBe(true);
    } finally {
      await m?.cleanup(); // the daemon off the tmpfs first (the fixture's own cleanup comes after this)
      execFileSync('umount', ['-l', fx.images], { stdio: 'ignore' });
    }
  });
});
