/**
 * The real-world VHDX files of the corpus (MANIFEST-formats.tsv): each one's raw view must hash
 * to sha256_raw_qemu. They are stored compressed only: unpacked into a temp folder here.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { isVdiskError } from '../../../src/io/errors';
import { openImage } from '../../../src/image/open';
import { CORPUS_DIR, qemuCheck, sha256File } from '../../helpers/qemu';
import { hashImage, rmrf, tmpDir } from './helpers';

interface Row {
  file: string;
  expect: string;
}

function rows(): Row[] {
  const lines = fs.readFileSync(path.join(CORPUS_DIR, 'MANIFEST-formats.tsv'), 'utf8').split('\n').filter(Boolean);
  const header = lines[0]!.split('\t');
  const fi = header.indexOf('file');
  const hi = header.indexOf('sha256_raw_qemu');
  return lines
    .slice(1)
    .map((l) => l.split('\t'))
    .filter((f) => /\.a?vhdx$/.test(f[fi]!))
    .map((f) => ({ file: f[fi]!, expect: f[hi]! }));
}

const dir = tmpDir('corpus');
afterAll(() => rmrf(dir));

/** The file unpacked (or copied) into the temp folder. */
function unpack(rel: string): string {
  const src = path.join(CORPUS_DIR, rel);
  const out = path.join(dir, path.basename(rel));
  if (fs.existsSync(out)) return out;
  if (fs.existsSync(src)) fs.copyFileSync(src, out);
  else if (fs.existsSync(`${src}.gz`)) fs.writeFileSync(out, execFileSync('gunzip', ['-c', `${src}.gz`], { maxBuffer: 1 << 30 }));
  else if (fs.existsSync(`${src}.bz2`)) fs.writeFileSync(out, execFileSync('bunzip2', ['-c', `${src}.bz2`], { maxBuffer: 1 << 30 }));
  else throw new Error(`${rel}: neither the file nor a .gz/.bz2 of it is in the corpus`);
  return out;
}

const all = rows();

describe('vhdx corpus', () => {
  it('the manifest lists the VHDX files', () => {
    expect(all.length).toBeGreaterThanOrEqual(6);
  });

  for (const r of all.filter((x) => /^[0-9a-f]{64}$/.test(x.expect))) {
    it(`${r.file}: raw view hashes to sha256_raw_qemu`, async () => {
      const file = unpack(r.file);
      const before = sha256File(file);
      const img = await openImage(file, { writable: false });
      try {
        expect(await hashImage(img)).toBe(r.expect);
      } finally {
        await img.close();
      }
      expect(sha256File(file)).toBe(before); // a read-only open writes nothing (the dirty log included)
    }, 120_000);
  }

  it('iotest-dirtylog: read-only replays in memory (QEMU refuses), writable replays on disk; qemu-img check clean after', async () => {
    const row = all.find((x) => x.file.endsWith('iotest-dirtylog-10G-4M.vhdx'))!;
    const file = unpack(row.file);
    const scratch = path.join(dir, 'dirtylog-scratch.vhdx');
    fs.copyFileSync(file, scratch);
    const before = sha256File(scratch);
    const ro = await openImage(scratch, { writable: false });
    try {
      expect(ro.stats().driver['replayedLogEntries']).toBeGreaterThan(0);
    } finally {
      await ro.close();
    }
    expect(sha256File(scratch)).toBe(before);
    expect(qemuCheck(scratch, 'vhdx').ok).toBe(false); // QEMU: the log needs replay
    const rw = await openImage(scratch, { writable: true });
    try {
      expect(await hashImage(rw)).toBe(row.expect);
    } finally {
      await rw.close();
    }
    expect(sha256File(scratch)).not.toBe(before);
    const chk = qemuCheck(scratch, 'vhdx');
    expect(chk.ok, chk.output).toBe(true);
    const again = await openImage(scratch, { writable: false });
    try {
      expect(again.stats().driver['replayedLogEntries']).toBe(0); // the log is empty now
      expect(await hashImage(again)).toBe(row.expect);
    } finally {
      await again.close();
    }
  }, 120_000);

  it('dissect/differencing.avhdx (parent never published): refused with one line naming the parent', async () => {
    const file = unpack(all.find((x) => x.file.endsWith('differencing.avhdx'))!.file);
    const err = await openImage(file, { writable: false }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(isVdiskError(err)).toBe(true);
    const msg = (err as Error).message;
    expect(msg).not.toContain('\n');
    expect(msg).toContain('Generation 1_49C4BAF3-4B25-4406-8C4B-D39E65C32385.avhdx');
  });
});
