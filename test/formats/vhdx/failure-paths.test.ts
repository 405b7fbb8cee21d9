/**
 * The VHDX driver when a host I/O fails part way (found by review, each test failing before its
 * fix):
 * - a write or zeroing over several blocks ended at the first failed block while another
 *   block's write still ran, which then landed over a later acknowledged write;
 * - a failed session start (the first header update) was kept for good: every later write,
 *   flush and close failed until a remount;
 * - the blocks a discard freed were forgotten when the commit failed: never punched (a leak).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openImage } from '../../../src/image/open';
import type { HostFile } from '../../../src/io/host-file';
import { failWrites, holdNext } from '../../helpers/host-faults';
import { tmpDir } from '../../helpers/image-io';
import { qemuCheck, qemuImg, qemuIo } from '../../helpers/qemu';

const dir = tmpDir('vhdx-failure-paths');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const MiB = 1 << 20;

function hostFile(img: unknown): HostFile {
  return (img as { f: HostFile }).f;
}

describe('vhdx: a multi-block write whose first block fails', () => {
  it('ends only after its other block write ended; a later acknowledged write is not overwritten', async () => {
    const f = path.join(dir, 'e.vhdx');
    qemuImg(['create', '-q', '-f', 'vhdx', '-o', 'block_size=1M', f, '16M']);
    const img = await openImage(f, { writable: true });
    const file = hostFile(img);
    try {
      await img.write(0, Buffer.alloc(2 * MiB, 1)); // blocks 0 and 1 FULLY_PRESENT: in place next
      const held = holdNext(file, 'write', 'data'); // block 1's write of W1 (inner)
      const restoreFail = failWrites(file, 'data', { times: 1 }); // block 0's write of W1 (outer)
      let ended = false;
      const w1 = img.write(MiB - 4096, Buffer.alloc(8192, 0xaa)).finally(() => (ended = true));
      w1.catch(() => {});
      await held.reached;
      await new Promise((r) => setTimeout(r, 20));
      const endedEarly = ended;
      // A later write over block 1's part of W1, acknowledged...
      if (endedEarly) await img.write(MiB, Buffer.alloc(4096, 0xbb));
      held.release();
      await expect(w1).rejects.toThrow(/EIO/);
      restoreFail();
      held.restore();
      const back = Buffer.alloc(4096);
      await img.read(MiB, back);
      expect(endedEarly, 'W1 failed while its block-1 write was still running').toBe(false);
      expect(back.every((b) => b === 0xbb || b === 0xaa)).toBe(true);
    } finally {
      await img.close();
    }
  });
});

describe('vhdx: a session start (header update) that failed once', () => {
  it('is tried again by the next write; flush and close succeed', async () => {
    const f = path.join(dir, 's.vhdx');
    qemuImg(['create', '-q', '-f', 'vhdx', f, '16M']);
    const img = await openImage(f, { writable: true });
    const file = hostFile(img);
    let closeError: unknown;
    try {
      const restore = failWrites(file, 'header', { code: 'ENOSPC' });
      await expect(img.write(0, Buffer.alloc(4096, 0x5a))).rejects.toThrow(/ENOSPC/);
      restore();
      await img.write(0, Buffer.alloc(4096, 0x5a));
      await img.flush();
    } finally {
      await img.close().catch((e) => (closeError = e));
    }
    expect(closeError).toBeUndefined();
    expect(qemuIo(f, ['read -P 0x5a 0 4k'], 'vhdx')).not.toMatch(/Pattern verification failed/);
  });
});

describe('vhdx: discard, a failed commit, then a good one', () => {
  it('punches the discarded block once the change is committed', async () => {
    const f = path.join(dir, 'd.vhdx');
    qemuImg(['create', '-q', '-f', 'vhdx', '-o', 'block_size=1M', f, '16M']);
    const img = await openImage(f, { writable: true });
    const file = hostFile(img);
    let before = 0;
    try {
      await img.write(0, Buffer.alloc(4 * MiB, 0x5a));
      await img.flush();
      before = fs.statSync(f).blocks * 512;
      await img.discard(0, 4 * MiB);
      const restore = failWrites(file, 'bat', { times: Infinity });
      await expect(img.flush()).rejects.toThrow(/EIO/);
      restore();
      await img.flush();
    } finally {
      await img.close();
    }
    const after = fs.statSync(f).blocks * 512;
    expect(qemuCheck(f, 'vhdx').ok).toBe(true);
    expect(before - after, 'bytes given back to the host').toBeGreaterThanOrEqual(4 * MiB);
  });
});
