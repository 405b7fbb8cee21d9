import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openImage } from '../../../src/image/open';
import type { HostFile } from '../../../src/io/host-file';
import { tmpDir } from '../../helpers/image-io';
import { failWrites } from '../../helpers/host-faults';
import { qemuCheck, qemuImg, qemuIo, qemuIoOutput } from '../../helpers/qemu';

/**
 * A block store that fails (a full disk, an I/O error) changes nothing that outlives it. Found by
 * review: the failed store used up a VDI slot, leaving a gap that QEMU (next slot =
 * cBlocksAllocated) then filled over a block in use; and the in-place writes a request had
 * started were left running, unawaited, after it failed.
 */
const dir = tmpDir('vdi-failed-store');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const MiB = 1 << 20;

function hostFileOf(img: unknown): HostFile {
  return (img as { table: { file: HostFile } }).table.file;
}

describe('a failed VDI block store', () => {
  it('leaves the slots dense: QEMU allocates after them and overwrites nothing', async () => {
    const f = path.join(dir, 'slots.vdi');
    qemuImg(['create', '-q', '-f', 'vdi', f, '8M']);
    const img = await openImage(f, { writable: true });
    try {
      await img.write(0, Buffer.alloc(64 * 1024, 0x11)); // slot 0
      failWrites(hostFileOf(img), 'data', { code: 'ENOSPC' });
      await expect(img.write(1 * MiB, Buffer.alloc(64 * 1024, 0x22))).rejects.toThrow(/ENOSPC/);
      await img.write(2 * MiB, Buffer.alloc(64 * 1024, 0x33)); // slot 1 again, not slot 2
    } finally {
      await img.close();
    }
    const check = qemuCheck(f, 'vdi');
    expect(check.ok, check.output).toBe(true);
    qemuIo(f, ['write -P 0x44 3M 64k'], 'vdi'); // QEMU takes slot cBlocksAllocated = 2
    for (const [pattern, at] of [
      [0x33, '2M'],
      [0x11, '0'],
      [0x44, '3M'],
      [0, '1M'],
    ] as const) {
      expect(qemuIoOutput(f, [`read -P ${pattern} ${at} 64k`], 'vdi')).not.toMatch(/Pattern verification failed|exit non-zero/);
    }
  });

  it('ends the in-place writes it started before it fails: none is left unawaited', async () => {
    const f = path.join(dir, 'inplace.vdi');
    qemuImg(['create', '-q', '-f', 'vdi', f, '8M']);
    const img = await openImage(f, { writable: true });
    let restore = (): void => undefined;
    const unhandled: unknown[] = [];
    const on = (e: unknown) => unhandled.push(e);
    const saved = process.listeners('unhandledRejection');
    process.removeAllListeners('unhandledRejection');
    process.on('unhandledRejection', on);
    try {
      await img.write(0, Buffer.alloc(MiB, 0x11)); // block 0 stored
      restore = failWrites(hostFileOf(img), 'data', { code: 'ENOSPC', times: Infinity });
      // Block 0 in place, block 1 to store: both fail.
      await expect(img.write(MiB - 65536, Buffer.alloc(131072, 0x22))).rejects.toThrow(/ENOSPC/);
      await new Promise((r) => setTimeout(r, 50));
    } finally {
      process.off('unhandledRejection', on);
      for (const l of saved) process.on('unhandledRejection', l);
      restore();
      await img.close();
    }
    expect(unhandled).toEqual([]);
  });
});
