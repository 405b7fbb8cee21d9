/**
 * Hostile VDIs: header fields and block maps that lie, patched into images qemu-img made. Each
 * must be refused with one VdiskError line or open safely (never a hang, a crash, a huge
 * allocation, or a write outside the image's own slots).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openImage } from '../../../src/image/open';
import { openVerdict, readAll, tmpDir } from '../../helpers/image-io';
import { qemuImg, qemuIo } from '../../helpers/qemu';

const dir = tmpDir('vdi-hostile');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const MiB = 1 << 20;
const MAP = 0x200;

const verdict = (file: string): Promise<string> => openVerdict(file, 3 * MiB);

const cases: Array<[string, (b: Buffer) => void, RegExp | 'opened']> = [
  ['version 0.0', (b) => b.writeUInt32LE(0, 0x44), /version 0\.0 is not supported/],
  ['type 9', (b) => b.writeUInt32LE(9, 0x4c), /type 9/],
  ['block size 0', (b) => b.writeUInt32LE(0, 0x178), /block size 0/],
  ['block size 3 MiB', (b) => b.writeUInt32LE(3 * MiB, 0x178), /power of two/],
  ['block size 1 GiB', (b) => b.writeUInt32LE(1 << 30, 0x178), /256 MiB/],
  ['2^31 blocks', (b) => b.writeUInt32LE(0x80000000, 0x180), /more than/],
  ['disk size 2^60', (b) => b.writeBigUInt64LE(1n << 60n, 0x170), /larger than its/],
  ['block map over the header', (b) => b.writeUInt32LE(0x100, 0x154), /overlaps the header/],
  ['data area over the block map', (b) => b.writeUInt32LE(0x200, 0x158), /overlaps the block map/],
  ['map entry past the slots', (b) => b.writeUInt32LE(1000, MAP + 4), /past the 8 slots/],
  ['two blocks on one slot', (b) => b.writeUInt32LE(b.readUInt32LE(MAP), MAP + 8), /also used by block/],
  ['header count behind the map (a crash between map and header): opens, next block still new', (b) => b.writeUInt32LE(0, 0x184), 'opened'],
  ['header count far ahead', (b) => b.writeUInt32LE(0xfffffff0, 0x184), 'opened'],
  ['map past the end of the file', (b) => b.writeUInt32LE(0x7ffffe00, 0x154), /past the end of the file|overlaps/],
];

describe('hostile VDIs: refused in one line, or safe', () => {
  for (const [i, [name, patch, want]] of cases.entries()) {
    it(name, async () => {
      const file = path.join(dir, `h${i}.vdi`);
      qemuImg(['create', '-q', '-f', 'vdi', file, '8M']);
      qemuIo(file, ['write -P 0x61 0 64k', 'write -P 0x62 1M 64k'], 'vdi');
      const b = fs.readFileSync(file);
      patch(b);
      fs.writeFileSync(file, b);
      const size = fs.statSync(file).size;
      const got = await verdict(file);
      if (want === 'opened') expect(got).toBe('opened');
      else expect(got).toMatch(want);
      expect(fs.statSync(file).size).toBeLessThanOrEqual(size + 2 * MiB);
    });
  }

  it('a crash left the header count behind: the next block takes a new slot, never one in use', async () => {
    const file = path.join(dir, 'behind.vdi');
    qemuImg(['create', '-q', '-f', 'vdi', file, '8M']);
    qemuIo(file, ['write -P 0x61 0 64k', 'write -P 0x62 1M 64k'], 'vdi');
    const b = fs.readFileSync(file);
    b.writeUInt32LE(0, 0x184);
    fs.writeFileSync(file, b);
    const img = await openImage(file, { writable: true });
    await img.write(5 * MiB, Buffer.alloc(4096, 0x63));
    await img.close();
    const again = await openImage(file, { writable: false });
    const all = await readAll(again);
    await again.close();
    expect(all.subarray(0, 65536).every((x) => x === 0x61)).toBe(true);
    expect(all.subarray(MiB, MiB + 65536).every((x) => x === 0x62)).toBe(true);
    expect(all.subarray(5 * MiB, 5 * MiB + 4096).every((x) => x === 0x63)).toBe(true);
    // And the count is right again: qemu-img check is clean.
    expect(() => qemuImg(['check', '-f', 'vdi', file])).not.toThrow();
  });
});
