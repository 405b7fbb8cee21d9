/**
 * The real-world corpus through a real mount: every image whose MANIFEST row has a hash reads
 * back through its raw view with exactly that SHA-256; every image QEMU refuses is left out with
 * one log line while the mount serves the rest; extent and data files are never shown alone.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { corpusDir, corpusRows, isHash, unpackCompressed, type CorpusRow } from '../helpers/corpus';
import { mount, tempDir, type Mounted } from '../helpers/mount';

const corpus = corpusDir();
if (!corpus) throw new Error('corpus not found: set VDISKFS_CORPUS or put shared/ beside the repo');
const rows = corpusRows(corpus);

const SESPARSE_DESCRIPTOR = 'dissect/sesparse-handwritten-descriptor.vmdk';
/**
 * dissect/sesparse.vmdk is a bare seSparse extent: QEMU probes its content as raw and its MANIFEST
 * hash is the file's own. vdiskfs refuses a .vmdk whose content is not VMDK (never guesses), and
 * reads the extent as what it is through a descriptor instead; both are tested below.
 */
const BARE_EXTENT = 'dissect/sesparse.vmdk';

let dir: { path: string; cleanup(): Promise<void> };
let m: Mounted;
let mnt: string;

async function sha256Of(file: string): Promise<string> {
  const h = createHash('sha256');
  const fd = await fs.promises.open(file, 'r');
  try {
    const buf = Buffer.alloc(1 << 20);
    for (let pos = 0; ;) {
      const { bytesRead } = await fd.read(buf, 0, buf.length, pos);
      if (bytesRead === 0) break;
      h.update(buf.subarray(0, bytesRead));
      pos += bytesRead;
    }
  } finally {
    await fd.close();
  }
  return h.digest('hex');
}

beforeAll(async () => {
  dir = await tempDir();
  const images = path.join(dir.path, 'corpus');
  execFileSync('cp', ['-a', '--sparse=always', corpus + '/.', images]);
  execFileSync('chmod', ['-R', 'u+w', images]);
  unpackCompressed(images, rows);
  // The external data file of dissect/data-file.qcow2 ships gzipped.
  execFileSync('sh', [
    '-c',
    `gunzip -c "${images}/dissect/data-file.bin.gz" | cp --sparse=always /dev/stdin "${images}/dissect/data-file.bin"`,
  ]);
  // The bare seSparse extent is no image on its own; QEMU (and the MANIFEST hash) read it through
  // a hand-written descriptor, which makes the extent an auxiliary file of that descriptor.
  fs.writeFileSync(
    path.join(images, SESPARSE_DESCRIPTOR),
    '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="seSparse"\n\n# Extent description\nRW 1048576 SESPARSE "sesparse.vmdk"\n',
  );
  mnt = path.join(dir.path, 'mnt');
  m = await mount(images, mnt, ['--read-only']);
}, 300_000);

afterAll(async () => {
  await m?.cleanup();
  await dir?.cleanup();
});

const hashed = rows.filter((r) => isHash(r.expect) && r.file !== BARE_EXTENT);
const refused = rows.filter((r) => r.expect.startsWith('qemu-fails'));
const auxiliary = rows.filter((r) => r.format === 'auxiliary file');

describe('corpus through the mount', () => {
  it('has rows of every kind (the manifest was read)', () => {
    expect(hashed.length).toBeGreaterThan(20);
    expect(refused.length).toBeGreaterThan(5);
    expect(auxiliary.length).toBeGreaterThan(3);
  });

  // Two at a time: the images are read through FUSE end to end (about 40 GiB of virtual disk).
  describe.concurrent('reads every hashed image with the expected SHA-256', () => {
    for (const row of hashed) {
      it(
        row.file,
        async () => {
          const view = path.join(mnt, row.file + '.raw');
          expect(fs.existsSync(view), `${row.file} is not shown; log:\n${m.stderr()}`).toBe(true);
          expect(fs.statSync(view).size).toBe(Number(row.virtualSize));
          const digest = await sha256Of(view).catch((e: Error) => `${e.message}; mount log:\n${m.stderr()}`);
          expect(digest).toBe(row.expect);
        },
        600_000,
      );
    }
  });

  it('leaves out every image QEMU refuses, with one log line each, and keeps serving', async () => {
    const listed = (folder: string) => fs.readdirSync(path.join(mnt, folder));
    for (const row of refused) listed(path.dirname(row.file));
    // The mount's log reaches us asynchronously: wait until every refusal has had time to arrive.
    for (const row of refused) await m.waitForLog(new RegExp(`left out ${row.file.replace(/[.]/g, '\\.')}`));
    const log = m.stderr();
    for (const row of refused) {
      expect(listed(path.dirname(row.file)), row.file).not.toContain(path.basename(row.file) + '.raw');
      const lines = log.split('\n').filter((l) => l.includes(`left out ${row.file}:`));
      expect(lines, `${row.file}: log was\n${log}`).toHaveLength(1);
    }
    // Still serving: a good image reads after all those refusals.
    const good = hashed.find((r) => r.file === 'plaso/image.qcow2')!;
    expect(await sha256Of(path.join(mnt, good.file + '.raw'))).toBe(good.expect);
  });

  it('never shows an extent or external data file on its own', () => {
    for (const row of [...auxiliary, { file: BARE_EXTENT }]) {
      const names = fs.readdirSync(path.join(mnt, path.dirname(row.file)));
      expect(names, row.file).not.toContain(path.basename(row.file) + '.raw');
    }
    expect(m.stderr()).not.toMatch(/left out vmdk-rs\/.*-(flat|f001|s001)\.vmdk/);
  });

  it('the bare seSparse extent: never guessed as raw, read as seSparse through a descriptor, equal to qemu-img', async () => {
    expect(fs.existsSync(path.join(mnt, BARE_EXTENT + '.raw'))).toBe(false);
    const view = path.join(mnt, SESPARSE_DESCRIPTOR + '.raw');
    const qemuView = path.join(dir.path, 'sesparse.qemu.raw');
    execFileSync('qemu-img', ['convert', '-O', 'raw', path.join(dir.path, 'corpus', SESPARSE_DESCRIPTOR), qemuView]);
    expect(await sha256Of(view)).toBe(await sha256Of(qemuView));
    const head = Buffer.alloc(16 << 20);
    const fd = fs.openSync(view, 'r');
    fs.readSync(fd, head, 0, head.length, 0);
    fs.closeSync(fd);
    expect(head.every((b) => b === 0x61)).toBe(true); // dissect's own check: the first 16 MiB are 'a'
  });

  it('an image with an absurd virtual size is either left out with a reason or safe to read', async () => {
    const rowsLeft = rows.filter((r: CorpusRow) => r.expect.startsWith('not-computed'));
    for (const row of rowsLeft) {
      const view = path.join(mnt, row.file + '.raw');
      if (!fs.existsSync(view)) {
        expect(await m.waitForLog(new RegExp(`left out ${row.file}`))).toMatch(new RegExp(`left out ${row.file}: `));
        continue;
      }
      const fd = fs.openSync(view, 'r');
      const buf = Buffer.alloc(1 << 20);
      fs.readSync(fd, buf, 0, buf.length, 0);
      fs.readSync(fd, buf, 0, buf.length, fs.fstatSync(fd).size - buf.length);
      fs.closeSync(fd);
    }
  });
});
