/**
 * A differencing chain: parent made by qemu-img, child by our create (qemu-img cannot), written
 * through the driver. The parent stays unchanged, the child reads as the parent overlaid with the
 * writes, and libvhdi's vhdimount (an independent reader) sees the same bytes.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import * as bat from '../../../src/formats/vhdx/bat';
import { parseRegionTable, REGION_TABLE_OFFSETS, REGION_TABLE_SIZE } from '../../../src/formats/vhdx/region-table';
import { isVdiskError } from '../../../src/io/errors';
import { openImage } from '../../../src/image/open';
import { qemuImg, qemuIo, rng, sha256File } from '../../helpers/qemu';
import { createChild, readAll, rmrf, tmpDir } from './helpers';

const dir = tmpDir('diff');
const mnt = path.join(dir, 'mnt');
afterAll(() => {
  spawnSync('fusermount', ['-u', mnt]);
  rmrf(dir);
});
const M = 1 << 20;

/** The child's raw view as vhdimount (libvhdi) shows it: the highest-numbered layer file. */
function vhdimountView(child: string): Buffer {
  fs.mkdirSync(mnt, { recursive: true });
  execFileSync('vhdimount', [child, mnt], { stdio: 'ignore', timeout: 30_000 });
  try {
    const layers = fs.readdirSync(mnt).filter((n) => /^vhdi\d+$/.test(n));
    layers.sort((a, b) => Number(a.slice(4)) - Number(b.slice(4)));
    return fs.readFileSync(path.join(mnt, layers[layers.length - 1]!));
  } finally {
    execFileSync('fusermount', ['-u', mnt], { stdio: 'ignore' });
  }
}

describe('vhdx differencing chain', () => {
  for (const bs of ['1M', '2M']) {
    it(`block ${bs}: child over a qemu-img parent; parent unchanged; libvhdi agrees`, async () => {
      const parent = path.join(dir, `parent-${bs}.vhdx`);
      const child = path.join(dir, `child-${bs}.avhdx`);
      const size = 12 * M;
      qemuImg(['create', '-f', 'vhdx', '-o', `block_size=${bs}`, parent, String(size)]);
      qemuIo(parent, ['write -P 0x61 0 5M', 'write -P 0x62 7M 3M'], 'vhdx');
      await createChild(child, parent, { block_size: bs });
      const parentHash = sha256File(parent);
      const mirror = await readAll(parent);
      expect((await readAll(child)).equals(mirror)).toBe(true);

      const r = rng(bs.length + 17);
      const img = await openImage(child, { writable: true });
      try {
        expect(img.backingImage?.()).toBeDefined();
        for (let k = 0; k < 8; k++) {
          const len = 1 + Math.floor(r() * 100_000);
          const off = Math.floor(r() * (size - len));
          const d = Buffer.alloc(len, 0x10 + k);
          d.copy(mirror, off);
          await img.write(off, d);
        }
        await img.writeZeroes(2 * M, 2 * M); // whole blocks: ZERO must hide the parent
        mirror.fill(0, 2 * M, 4 * M);
        await img.writeZeroes(7 * M + 100, 5000); // partial: the parent's bytes around stay
        mirror.fill(0, 7 * M + 100, 7 * M + 5100);
        await img.discard(9 * M, M);
        mirror.fill(0, 9 * M, 10 * M);
        await img.flush();
        const ext = await img.map(0, size);
        expect(ext.some((e) => e.kind === 'backing')).toBe(true);
      } finally {
        await img.close();
      }
      expect(sha256File(parent)).toBe(parentHash);
      expect((await readAll(child)).equals(mirror)).toBe(true);
      // libvhdi 20210425 reads a differencing disk's ZERO blocks from the parent or from garbage
      // (it knows only present/not-present): the whole-block zeroed ranges are left out there.
      const lib = vhdimountView(child);
      for (const [a, b] of [
        [0, 2 * M],
        [4 * M, 9 * M],
        [10 * M, size],
      ] as const)
        expect(lib.subarray(a, b).equals(mirror.subarray(a, b)), `libvhdi ${a}..${b}`).toBe(true);
      const opened = await openImage(child, { writable: false });
      expect(opened.backingImage?.()?.path).toBe(parent);
      await opened.close();
    });
  }

  it('PARTIALLY_PRESENT blocks: sectors from the bitmap (set: the child, clear: the parent); a write makes the block whole', async () => {
    const parent = path.join(dir, 'pp-parent.vhdx');
    const child = path.join(dir, 'pp-child.avhdx');
    qemuImg(['create', '-f', 'vhdx', '-o', 'block_size=1M', parent, String(8 * M)]);
    qemuIo(parent, ['write -P 0x61 0 8M'], 'vhdx');
    await createChild(child, parent, { block_size: '1M' });
    // Block 1 of the child: 1 MiB of 0x77 appended, sectors 10-19 and 100-355 marked present.
    const buf = fs.readFileSync(child);
    const r = parseRegionTable('x', buf.subarray(REGION_TABLE_OFFSETS[0], REGION_TABLE_OFFSETS[0] + REGION_TABLE_SIZE), buf.length);
    if (typeof r === 'string') throw new Error(r);
    const table = buf.subarray(r.bat.offset, r.bat.offset + r.bat.length);
    const g = bat.batGeometry(8 * M, M, 512, true);
    const bmHost = bat.entryOffsetMB(table, bat.bitmapIndex(g, 0)) * M;
    const host = Math.ceil(buf.length / M) * M;
    bat.setEntry(table, bat.payloadIndex(g, 1), bat.PARTIALLY_PRESENT, host / M);
    const setBit = (sector: number) => (buf[bmHost + (sector >> 3)] = buf[bmHost + (sector >> 3)]! | (1 << (sector & 7)));
    const present = [...Array.from({ length: 10 }, (_, i) => 10 + i), ...Array.from({ length: 256 }, (_, i) => 100 + i)];
    for (const sct of present) setBit(2048 + sct); // block 1's sectors start at bit 2048 of chunk 0
    fs.writeFileSync(child, Buffer.concat([buf, Buffer.alloc(host - buf.length), Buffer.alloc(M, 0x77)]));
    const mirror = Buffer.alloc(8 * M, 0x61);
    for (const sct of present) mirror.fill(0x77, M + sct * 512, M + (sct + 1) * 512);
    expect((await readAll(child)).equals(mirror)).toBe(true);
    expect(vhdimountView(child).equals(mirror)).toBe(true);
    const img = await openImage(child, { writable: true });
    try {
      const ext = await img.map(M, M);
      expect(ext.map((e) => e.kind)).toEqual(['backing', 'data', 'backing', 'data', 'backing']);
      await img.write(M + 50 * 512, Buffer.alloc(4096, 0x88));
      mirror.fill(0x88, M + 50 * 512, M + 50 * 512 + 4096);
      expect((await img.map(M, M)).map((e) => e.kind)).toEqual(['data']);
    } finally {
      await img.close();
    }
    expect((await readAll(child)).equals(mirror)).toBe(true);
    expect(vhdimountView(child).equals(mirror)).toBe(true);
  });

  it('a parent written after the child was made is refused (DataWriteGuid no longer matches)', async () => {
    const parent = path.join(dir, 'moved-on.vhdx');
    const child = path.join(dir, 'moved-on-child.avhdx');
    qemuImg(['create', '-f', 'vhdx', '-o', 'block_size=1M', parent, String(4 * M)]);
    await createChild(child, parent);
    const p = await openImage(parent, { writable: true });
    await p.write(0, Buffer.alloc(4096, 1));
    await p.close();
    const err = await openImage(child, { writable: false }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(isVdiskError(err)).toBe(true);
    expect((err as Error).message).toContain('moved-on.vhdx');
    expect((err as Error).message).not.toContain('\n');
  });

  it('a missing parent is refused with one line naming it', async () => {
    const parent = path.join(dir, 'gone.vhdx');
    const child = path.join(dir, 'gone-child.avhdx');
    qemuImg(['create', '-f', 'vhdx', parent, String(4 * M)]);
    await createChild(child, parent);
    fs.rmSync(parent);
    const err = await openImage(child, { writable: false }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(isVdiskError(err)).toBe(true);
    expect((err as Error).message).toMatch(/gone\.vhdx.*not found/);
  });
});
