import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openImage } from '../../../src/image/open';
import { isVdiskError } from '../../../src/io/errors';
import { qemuImg, qemuIo } from '../../helpers/qemu';
import { tmpDir } from './helpers';

/** Broken and hostile files: a clear VdiskError (or a safe open), never a hang, crash or huge allocation. */
const dir = tmpDir('hostile');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function base(name: string, writes: string[] = []): { file: string; buf: Buffer } {
  const file = path.join(dir, name);
  qemuImg(['create', '-f', 'vmdk', file, '8M']);
  if (writes.length) qemuIo(file, writes, 'vmdk');
  return { file, buf: fs.readFileSync(file) };
}

async function refused(file: string, code: string, re: RegExp): Promise<void> {
  const before = process.memoryUsage().rss;
  let err: unknown;
  try {
    const img = await openImage(file, { writable: false, warn: () => {} });
    await img.close();
  } catch (e) {
    err = e;
  }
  expect(isVdiskError(err), String(err)).toBe(true);
  expect(err).toMatchObject({ code });
  expect((err as Error).message).toMatch(re);
  expect(process.memoryUsage().rss - before).toBeLessThan(256 << 20);
}

describe('vmdk hostile images', () => {
  it('absurd capacity (grain directory bigger than the file)', async () => {
    const { file, buf } = base('cap.vmdk');
    buf.writeBigUInt64LE(1n << 40n, 12);
    fs.writeFileSync(file, buf);
    await refused(file, 'ECORRUPT', /grain directory size too big/);
    buf.writeBigUInt64LE(1n << 50n, 12);
    fs.writeFileSync(file, buf);
    await refused(file, 'ECORRUPT', /capacity too big/);
  });

  it('grain size 0 and numGTEsPerGT 0', async () => {
    const a = base('g0.vmdk');
    a.buf.writeBigUInt64LE(0n, 20);
    fs.writeFileSync(a.file, a.buf);
    await refused(a.file, 'ECORRUPT', /grain size/);
    const b = base('n0.vmdk');
    b.buf.writeUInt32LE(0, 44);
    fs.writeFileSync(b.file, b.buf);
    await refused(b.file, 'ECORRUPT', /numGTEsPerGT/);
  });

  it('grain directory past the end of the file', async () => {
    const { file, buf } = base('gd.vmdk');
    buf.writeBigUInt64LE(1n << 30n, 56);
    fs.writeFileSync(file, buf);
    await refused(file, 'ECORRUPT', /past the end/);
  });

  it('unknown version, a bare COWD extent, VMFSRDM extent lines are ENOTSUP', async () => {
    const v = base('v9.vmdk');
    v.buf.writeUInt32LE(9, 4);
    fs.writeFileSync(v.file, v.buf);
    await refused(v.file, 'ENOTSUP', /version 9/);
    const cowd = path.join(dir, 'cowd.vmdk');
    const c = Buffer.alloc(4096);
    c.write('COWD', 0, 'latin1');
    fs.writeFileSync(cowd, c);
    await refused(cowd, 'ENOTSUP', /COWD/);
    fs.writeFileSync(path.join(dir, 'se-data.vmdk'), Buffer.alloc(4096));
    for (const t of ['VMFSRDM']) {
      const d = path.join(dir, `${t}.vmdk`);
      fs.writeFileSync(d, `# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType="seSparse"\nRW 8 ${t} "se-data.vmdk"\n`);
      await refused(d, 'ENOTSUP', new RegExp(t));
    }
  });

  it('missing extent file and missing parent are ENOENT', async () => {
    const d = path.join(dir, 'noext.vmdk');
    fs.writeFileSync(
      d,
      '# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType="monolithicFlat"\nRW 8 FLAT "nothere.vmdk" 0\n',
    );
    await refused(d, 'ENOENT', /nothere/);
    const child = path.join(dir, 'orphan.vmdk');
    qemuImg(['create', '-f', 'vmdk', path.join(dir, 'gone.vmdk'), '1M']);
    qemuImg(['create', '-f', 'vmdk', '-b', 'gone.vmdk', '-F', 'vmdk', child]);
    fs.rmSync(path.join(dir, 'gone.vmdk'));
    await refused(child, 'ENOENT', /gone/);
  });

  it('a descriptor without extents, and a KDMV file whose descriptor was wiped', async () => {
    const d = path.join(dir, 'empty-desc.vmdk');
    fs.writeFileSync(d, '# Disk DescriptorFile\nversion=1\nCID=1\ncreateType="monolithicFlat"\n');
    await refused(d, 'ECORRUPT', /no extent/);
    const { file, buf } = base('wiped.vmdk');
    buf.fill(0, 512, 512 * 21);
    fs.writeFileSync(file, buf);
    await refused(file, 'ECORRUPT', /without an embedded descriptor/);
  });

  it('a grain entry past EOF reads zeros; a corrupt compressed grain is ECORRUPT on read', async () => {
    const { file, buf } = base('gte.vmdk', ['write -P 0x11 0 64k']);
    const gt = buf.readUInt32LE(Number(buf.readBigUInt64LE(56)) * 512);
    buf.writeUInt32LE(0x7fffffff, gt * 512);
    fs.writeFileSync(file, buf);
    const img = await openImage(file, { writable: false });
    try {
      const b = Buffer.alloc(65536, 1);
      await img.read(0, b);
      expect(b.every((x) => x === 0)).toBe(true);
    } finally {
      await img.close();
    }
    const src = base('zs.vmdk', ['write -P 0x22 0 64k']).file;
    const s = path.join(dir, 'zs-stream.vmdk');
    qemuImg(['convert', '-O', 'vmdk', '-o', 'subformat=streamOptimized', src, s]);
    const sb = fs.readFileSync(s);
    const overHead = Number(sb.readBigUInt64LE(64)) * 512;
    sb.fill(0xee, overHead + 12, overHead + 64); // garble the deflate stream of grain 0
    fs.writeFileSync(s, sb);
    const si = await openImage(s, { writable: false });
    try {
      await expect(si.read(0, Buffer.alloc(4096))).rejects.toMatchObject({ code: 'ECORRUPT' });
    } finally {
      await si.close();
    }
  });

  it('a version 3 sparse extent that is not a stream (ESXi) opens read-only with the reason', async () => {
    const { file, buf } = base('esxi3.vmdk', ['write -P 0x33 0 64k']);
    buf.writeUInt32LE(3, 4);
    fs.writeFileSync(file, buf);
    const warnings: string[] = [];
    const img = await openImage(file, { writable: true, warn: (m) => warnings.push(m) });
    try {
      expect(img.readOnly).toBe(true);
      expect(warnings.join('\n')).toMatch(/version 3/);
      const b = Buffer.alloc(4096);
      await img.read(0, b);
      expect(b.every((x) => x === 0x33)).toBe(true);
    } finally {
      await img.close();
    }
  });

  it('out-of-range requests are EINVAL', async () => {
    const { file } = base('range.vmdk');
    const img = await openImage(file, { writable: true });
    try {
      await expect(img.read(8 << 20, Buffer.alloc(1))).rejects.toMatchObject({ code: 'EINVAL' });
      await expect(img.write((8 << 20) - 1, Buffer.alloc(2))).rejects.toMatchObject({ code: 'EINVAL' });
      await expect(img.writeZeroes(-1, 2)).rejects.toMatchObject({ code: 'EINVAL' });
    } finally {
      await img.close();
    }
  });
});
