/**
 * close() while a write is still running: close waits for it, so its table entries reach the
 * disk before close's flush (qcow2's own test is in qcow2/allocate-direct.test.ts). Through FUSE
 * the merger drains first; a user of the Image API can close mid-request.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openImage } from '../../src/image/open';
import { HostFile } from '../../src/io/host-file';
import { tmpDir } from '../helpers/image-io';
import { qemuCheck, qemuImg, qemuIo } from '../helpers/qemu';

const dir = tmpDir('close-in-flight');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const MiB = 1 << 20;

/** Holds the next host write tagged 'data' of any file until release(). */
function holdNextDataWrite(): { reached: Promise<void>; release: () => void; restore: () => void } {
  const write = HostFile.prototype.write;
  let release!: () => void;
  let reached!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const reachedP = new Promise<void>((r) => (reached = r));
  let armed = true;
  HostFile.prototype.write = function (this: HostFile, data, pos, tag) {
    if (!armed || tag !== 'data') return write.call(this, data, pos, tag);
    armed = false;
    reached();
    return gate.then(() => write.call(this, data, pos, tag));
  };
  return { reached: reachedP, release, restore: () => (HostFile.prototype.write = write) };
}

describe('close with a write in flight', () => {
  for (const { format, ext, checks } of [
    { format: 'qcow2', ext: 'qcow2', checks: true },
    { format: 'vmdk', ext: 'vmdk', checks: true },
    { format: 'vhdx', ext: 'vhdx', checks: true },
    { format: 'vdi', ext: 'vdi', checks: true },
    { format: 'vpc', ext: 'vhd', checks: false },
  ] as const) {
    for (const where of ['into new blocks', 'in place'] as const)
      it(`${format}, ${where}: waits for it; QEMU reads what the write acknowledged`, async () => {
        const f = path.join(dir, `c.${ext}`);
        qemuImg(['create', '-q', '-f', format, f, '16M']);
        const img = await openImage(f, { writable: true });
        await img.write(0, Buffer.alloc(4096, 1)); // first-write work (VMDK's CID, VHDX's session) done
        if (where === 'in place') await img.write(4 * MiB, Buffer.alloc(2 * MiB, 1)); // whole blocks: no table change next
        const held = holdNextDataWrite();
        let closed = false;
        let writing: Promise<void>;
        let closing: Promise<void>;
        try {
          writing = img.write(4 * MiB, Buffer.alloc(MiB, 0x5a));
          await held.reached;
          closing = img.close().then(() => {
            closed = true;
          });
          await new Promise((r) => setTimeout(r, 30));
          expect(closed, 'close returned with a write still in flight').toBe(false);
        } finally {
          held.release();
          held.restore();
        }
        await Promise.all([writing, closing]);
        if (checks) {
          const check = qemuCheck(f, format);
          expect(check.ok, check.output).toBe(true);
        }
        expect(qemuIo(f, ['read -P 0x5a 4M 1M'], format)).not.toMatch(/Pattern verification failed/);
      });
  }
});
