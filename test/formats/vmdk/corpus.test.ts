import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { isVdiskError } from '../../../src/io/errors';
import { openImage } from '../../../src/image/open';
import { Confinement } from '../../../src/image/confine';
import { vmdkDriver } from '../../../src/formats/vmdk/index';
import { readHead } from '../../../src/image/probe';
import { corpusDir, hashImage } from './helpers';
import { qemuRaw, sha256File } from '../../helpers/qemu';

/** The real-world corpus: every vmdk row with a hash reads with exactly that SHA-256; qemu-fails rows fail cleanly. */
const corpus = corpusDir();
interface Row {
  file: string;
  fmt: string;
  raw: string;
  notes: string;
}
const rows: Row[] = fs
  .readFileSync(path.join(corpus, 'MANIFEST.tsv'), 'utf8')
  .split('\n')
  .slice(1)
  .filter(Boolean)
  .map((l) => {
    const c = l.split('\t');
    return { file: c[0]!, fmt: c[3] ?? '', raw: c[6] ?? '', notes: c[9] ?? '' };
  });
const vmdkRows = rows.filter((r) => r.file.endsWith('.vmdk'));

describe('vmdk corpus', () => {
  it('has vmdk rows', () => {
    expect(vmdkRows.length).toBeGreaterThan(10);
  });

  for (const r of vmdkRows.filter((x) => /^[0-9a-f]{64}$/.test(x.raw) && x.fmt !== 'auxiliary file')) {
    it(`${r.file} reads with the manifest's SHA-256`, async () => {
      const img = await openImage(path.join(corpus, r.file), { writable: false, warn: () => {} });
      try {
        expect(await hashImage(img)).toBe(r.raw);
      } finally {
        await img.close();
      }
    }, 120_000);
  }

  for (const r of vmdkRows.filter((x) => x.raw.startsWith('qemu-fails'))) {
    it(`${r.file} is refused with a clear VdiskError`, async () => {
      const before = process.memoryUsage().rss;
      let err: unknown;
      try {
        const img = await openImage(path.join(corpus, r.file), { writable: false, warn: () => {} });
        await img.close();
      } catch (e) {
        err = e;
      }
      expect(isVdiskError(err), String(err)).toBe(true);
      expect((err as Error).message.split('\n').length).toBe(1);
      expect(process.memoryUsage().rss - before).toBeLessThan(512 << 20);
    }, 60_000);
  }

  it('auxiliary files are listed by their owner', async () => {
    const aux = rows.filter((r) => r.fmt === 'auxiliary file' && r.file.endsWith('.vmdk'));
    expect(aux.length).toBeGreaterThan(0);
    const owners = vmdkRows.filter((r) => r.fmt !== 'auxiliary file' && /^[0-9a-f]{64}$/.test(r.raw));
    const listed = new Set<string>();
    for (const o of owners) {
      const p = path.join(corpus, o.file);
      if (!vmdkDriver.probe(await readHead(p), p)) continue; // e.g. the bare seSparse extent, which reads as raw
      for (const a of (await vmdkDriver.describe!(p, await readHead(p))).auxiliaryFiles ?? []) listed.add(path.relative(corpus, a));
    }
    for (const a of aux) expect(listed.has(a.file), a.file).toBe(true);
  });

  it('dfvfs/ext2-2020.vmdk reads itself, not the extent its embedded descriptor names', async () => {
    const p = path.join(corpus, 'dfvfs/ext2-2020.vmdk');
    expect((await vmdkDriver.describe!(p, await readHead(p))).auxiliaryFiles).toEqual([]);
  });

  it('dissect/sesparse.vmdk (bare seSparse extent) through a hand-written descriptor: read-only, as qemu-img reads it', async () => {
    const ext = path.join(corpus, 'dissect/sesparse.vmdk');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-vmdk-se-'));
    try {
      const f = path.join(dir, 'se.vmdk');
      fs.writeFileSync(
        f,
        `# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="seSparse"\n\n# Extent description\nRW 1048576 SESPARSE "${ext}"\n`,
      );
      const raw = qemuRaw(f, path.join(dir, 'se.raw'));
      const warnings: string[] = [];
      // The descriptor names the corpus file outside its folder: that takes a door (--allow-outside).
      const confinement = await Confinement.create(dir, [path.dirname(ext)]);
      const img = await openImage(f, { writable: true, warn: (m) => warnings.push(m), confinement });
      try {
        expect(img.readOnly).toBe(true);
        expect(warnings.join('\n')).toMatch(/seSparse/);
        expect(await hashImage(img)).toBe(sha256File(raw));
        const first = Buffer.alloc(16 << 20);
        await img.read(0, first);
        expect(first.every((x) => x === 0x61)).toBe(true); // dissect's own check: the first 16 MiB are 'a'
      } finally {
        await img.close();
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);
});
