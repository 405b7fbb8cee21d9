/**
 * The real-world corpus (../shared/corpus): every qcow2 row of MANIFEST.tsv with a
 * sha256_raw_qemu hash reads back in-process with exactly that SHA-256; every 'qemu-fails'
 * qcow2 row fails to open with a VdiskError (no crash, no hang, bounded memory).
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { VdiskError } from '../../../src/io/errors';
import { openImage } from '../../../src/image/open';
import { tempDir } from './helpers';
import { reachAnywhere } from '../../helpers/reach';

const repoRoot = path.resolve(__dirname, '../../..');
const corpus = [process.env['VDISKFS_CORPUS'], path.resolve(repoRoot, '../shared/corpus'), '/work/shared/corpus'].find(
  (p): p is string => !!p && fs.existsSync(path.join(p, 'MANIFEST.tsv')),
);
if (!corpus) throw new Error('corpus not found (set VDISKFS_CORPUS)');

interface Row {
  file: string;
  expected: string;
}
const rows: Row[] = fs
  .readFileSync(path.join(corpus, 'MANIFEST.tsv'), 'utf8')
  .split('\n')
  .slice(1)
  .map((l) => l.split('\t'))
  .filter((c) => c.length > 6 && /\.qcow2?$/.test(c[0]!))
  .map((c) => ({ file: c[0]!, expected: c[6]! }));

const work = tempDir('corpus');
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

/** dissect/data-file.qcow2 needs its data file gunzipped next to it: done in a temp copy. */
function locate(file: string): string {
  if (file !== 'dissect/data-file.qcow2') return path.join(corpus!, file);
  const d = path.join(work, 'dissect');
  if (!fs.existsSync(path.join(d, 'data-file.bin'))) {
    fs.mkdirSync(d, { recursive: true });
    execFileSync('cp', [
      '-a',
      '--sparse=always',
      path.join(corpus!, 'dissect/data-file.qcow2'),
      path.join(corpus!, 'dissect/data-file.bin.gz'),
      d,
    ]);
    fs.chmodSync(path.join(d, 'data-file.bin.gz'), 0o644);
    execFileSync('sh', [
      '-c',
      `gunzip -c '${path.join(d, 'data-file.bin.gz')}' | cp --sparse=always /dev/stdin '${path.join(d, 'data-file.bin')}'`,
    ]);
  }
  return path.join(d, 'data-file.qcow2');
}

async function rawSha256(file: string): Promise<string> {
  const img = await openImage(file, { writable: false, warn: () => undefined });
  try {
    const h = createHash('sha256');
    const buf = Buffer.alloc(4 << 20);
    for (let off = 0; off < img.virtualSize; off += buf.length) {
      const n = Math.min(buf.length, img.virtualSize - off);
      const b = n === buf.length ? buf : buf.subarray(0, n);
      await img.read(off, b);
      h.update(b);
    }
    return h.digest('hex');
  } finally {
    await img.close();
  }
}

describe('qcow2 corpus', () => {
  it('has qcow2 rows', () => {
    expect(rows.filter((r) => /^[0-9a-f]{64}$/.test(r.expected)).length).toBeGreaterThanOrEqual(14);
    expect(rows.filter((r) => r.expected.startsWith('qemu-fails')).length).toBeGreaterThanOrEqual(4);
  });

  for (const r of rows.filter((x) => /^[0-9a-f]{64}$/.test(x.expected))) {
    it(`${r.file} reads with the manifest's SHA-256`, async () => {
      expect(await rawSha256(locate(r.file))).toBe(r.expected);
    });
  }

  for (const r of rows.filter((x) => x.expected.startsWith('qemu-fails'))) {
    it(`${r.file} is refused with a VdiskError (${r.expected.slice(0, 80)})`, async () => {
      const rss = process.memoryUsage().rss;
      const err = await openImage(locate(r.file), { writable: false, warn: () => undefined }).then(
        async (img) => {
          await img.close();
          return undefined;
        },
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(VdiskError);
      expect((err as VdiskError).message.length).toBeGreaterThan(0);
      expect(process.memoryUsage().rss - rss).toBeLessThan(256 << 20);
    });
  }

  it('cdi/invalid-qcow-large-size.qcow2 (QCOW version 1) is refused with a VdiskError', async () => {
    await expect(openImage(path.join(corpus, 'cdi/invalid-qcow-large-size.qcow2'), { writable: false })).rejects.toBeInstanceOf(VdiskError);
  });

  it('dissect/snapshot.qcow2 lists its two internal snapshots', async () => {
    const { qcow2Driver } = await import('../../../src/formats/qcow2');
    const f = path.join(corpus, 'dissect/snapshot.qcow2');
    expect((await qcow2Driver.describe!(f, Buffer.alloc(0))).snapshots).toEqual(["you can't see me", 'confused']);
    const img = await openImage(f, { writable: false });
    const info = await img.info();
    await img.close();
    const q = JSON.parse(execFileSync('qemu-img', ['info', '--output=json', '-U', f], { encoding: 'utf8' })) as { snapshots: unknown[] };
    expect(info.snapshots).toEqual(q.snapshots);
  });

  it('cdi/invalid-qcow-large-json.qcow2: 65536 bogus snapshot entries do not stop the image (no usable names; info lists them like qemu-img)', async () => {
    const { qcow2Driver } = await import('../../../src/formats/qcow2');
    const f = path.join(corpus, 'cdi/invalid-qcow-large-json.qcow2');
    expect((await qcow2Driver.describe!(f, Buffer.alloc(0))).snapshots).toEqual([]);
    const img = await openImage(f, { writable: false });
    const info = await img.info();
    await img.close();
    expect(info.snapshots?.length).toBe(65536);
    const check = await qcow2Driver.check!(f, {
      writable: false,
      repair: false,
      openBacking: () => Promise.reject(new Error('none')),
      reach: reachAnywhere,
      warn: () => undefined,
    });
    expect(check.corruptions).toBeGreaterThan(0);
  });
});
