/**
 * The real-world VHD, VHDX and VDI images of the corpus (MANIFEST-formats.tsv rows whose format
 * vdiskfs reads) through the drivers: each hashed row reads with exactly its SHA-256; each row
 * QEMU fails on (a differencing disk whose parent was never published) is refused with one line
 * naming the parent, never served alone; each too big to hash has the manifest's size and reads.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isVdiskError } from '../../src/io/errors';
import { openImage } from '../../src/image/open';
import { corpusDir, corpusRows, isHash, unpackCompressed } from '../helpers/corpus';
import { hashImage, tmpDir } from '../helpers/image-io';

const corpus = corpusDir()!;
const rows = corpusRows(corpus).filter((r) => /^(vpc|vdi|vhdx)\//.test(r.format));
let copy: string;

beforeAll(() => {
  copy = tmpDir('corpus-formats');
  for (const r of rows) {
    const dst = path.join(copy, r.file);
    fs.mkdirSync(path.dirname(dst), { recursive: true });
    for (const ext of ['', '.gz', '.bz2'])
      if (fs.existsSync(path.join(corpus, r.file + ext))) fs.copyFileSync(path.join(corpus, r.file + ext), dst + ext);
  }
  unpackCompressed(copy, rows);
}, 300_000);
afterAll(() => fs.rmSync(copy, { recursive: true, force: true }));

describe('VHD, VHDX and VDI of the corpus', () => {
  it('has rows of the new formats', () => {
    expect(rows.filter((r) => r.format.startsWith('vpc/')).length).toBeGreaterThanOrEqual(7);
    expect(rows.filter((r) => r.format.startsWith('vdi/')).length).toBeGreaterThanOrEqual(1);
  });

  for (const r of rows.filter((x) => isHash(x.expect))) {
    it(`${r.file} reads with the manifest's SHA-256 and size`, async () => {
      const f = path.join(copy, r.file);
      const before = sha(f);
      const img = await openImage(f, { writable: false, warn: () => {} });
      try {
        expect(img.virtualSize).toBe(Number(r.virtualSize));
        expect(await hashImage(img)).toBe(r.expect);
      } finally {
        await img.close();
      }
      expect(sha(f), 'a read-only open changed the file').toBe(before);
    }, 300_000);
  }

  for (const r of rows.filter((x) => x.expect.startsWith('not-computed'))) {
    it(`${r.file}: the manifest's size, no block stored, first and last MiB read`, async () => {
      const img = await openImage(path.join(copy, r.file), { writable: false, warn: () => {} });
      try {
        expect(img.virtualSize).toBe(Number(r.virtualSize));
        expect((await img.map(0, img.virtualSize)).every((x) => x.kind !== 'data')).toBe(true);
        const buf = Buffer.alloc(1 << 20, 1);
        await img.read(img.virtualSize - buf.length, buf);
        expect(buf.every((b) => b === 0)).toBe(true);
      } finally {
        await img.close();
      }
    });
  }

  for (const r of rows.filter((x) => x.expect.startsWith('qemu-fails'))) {
    it(`${r.file} is refused with one line naming its parent`, async () => {
      let err: unknown;
      try {
        await (await openImage(path.join(copy, r.file), { writable: false, warn: () => {} })).close();
      } catch (e) {
        err = e;
      }
      expect(isVdiskError(err), String(err)).toBe(true);
      const msg = (err as Error).message;
      expect(msg.split('\n')).toHaveLength(1);
      expect(msg).toMatch(/parent .*not found/);
    });
  }
});

function sha(file: string): string {
  return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}
