/**
 * VMDK at scale in the commands (#20; not timed: make bench measures): a monolithicSparse VMDK of
 * 2047 GiB whose every grain table entry is allocated (bench/lib/populated-vmdk.ts: 32 Mi grains,
 * 65,504 tables and their redundant copies) checks clean as qemu-img finds it and maps to the one
 * data range its layout says; a 256 GiB one maps exactly as qemu-img maps it (qemu-img takes half
 * a minute per TiB there). Then the same check finds a grain shared by two entries, a table and
 * its redundant copy that differ, and a grain past the end of the file.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { populateGrainTables } from '../../../bench/lib/populated-vmdk';
import { parse as parseSparseHeader } from '../../../src/formats/vmdk/sparse-header';
import { tmpDir } from '../../helpers/image-io';
import { CLI } from '../../helpers/mount';

let dir: string;
const qemuImg = (...a: string[]) => spawnSync('qemu-img', a, { cwd: dir, encoding: 'utf8', maxBuffer: 64 << 20 });
const ours = (...a: string[]) => spawnSync(process.execPath, [CLI, ...a], { cwd: dir, encoding: 'utf8', maxBuffer: 64 << 20 });

beforeAll(() => {
  dir = tmpDir('vmdk-scale');
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function populated(name: string, size: string): { file: string; overHead: number; capacity: number } {
  execFileSync('qemu-img', ['create', '-q', '-f', 'vmdk', name, size], { cwd: dir });
  const file = path.join(dir, name);
  populateGrainTables(file);
  const head = Buffer.alloc(512);
  const fd = fs.openSync(file, 'r');
  fs.readSync(fd, head, 0, 512, 0);
  fs.closeSync(fd);
  const h = parseSparseHeader(head);
  return { file, overHead: h.overHead, capacity: h.capacity };
}

describe('VMDK at scale', () => {
  it('2047 GiB, every grain allocated: check clean as qemu-img says, map one data range at the layout offset', () => {
    const v = populated('full.vmdk', '2047G');
    expect(qemuImg('check', 'full.vmdk').status).toBe(0);
    const c = ours('check', 'full.vmdk');
    expect(c.status, c.stderr).toBe(0);
    expect(c.stdout).toMatch(/No errors were found on the image/);
    const m = ours('map', '--output=json', 'full.vmdk');
    expect(m.status, m.stderr).toBe(0);
    expect(JSON.parse(m.stdout)).toEqual([
      { start: 0, length: v.capacity * 512, depth: 0, present: true, zero: false, data: true, offset: v.overHead * 512 },
    ]);
  }, 300_000);

  it('256 GiB, every grain allocated: map --output=json equal to qemu-img', () => {
    populated('quarter.vmdk', '256G');
    const q = qemuImg('map', '--output=json', 'quarter.vmdk');
    expect(q.status, q.stderr).toBe(0);
    const m = ours('map', '--output=json', 'quarter.vmdk');
    expect(m.status, m.stderr).toBe(0);
    expect(JSON.parse(m.stdout)).toEqual(JSON.parse(q.stdout));
  }, 300_000);

  it('finds a grain used twice, a redundant table that differs, and a grain past the end', () => {
    const v = populated('broken.vmdk', '64G');
    const fd = fs.openSync(v.file, 'r+');
    try {
      const head = Buffer.alloc(512);
      fs.readSync(fd, head, 0, 512, 0);
      const h = parseSparseHeader(head);
      const gd = Buffer.alloc(4);
      fs.readSync(fd, gd, 0, 4, h.gdOffset * 512);
      const gt0 = gd.readUInt32LE(0) * 512;
      const entry = Buffer.alloc(4);
      // Entry 1 of table 0 names grain 0's sector too (in both copies): one grain used twice.
      fs.readSync(fd, entry, 0, 4, gt0);
      fs.writeSync(fd, entry, 0, 4, gt0 + 4);
      const rgd = Buffer.alloc(4);
      fs.readSync(fd, rgd, 0, 4, h.rgdOffset * 512);
      fs.writeSync(fd, entry, 0, 4, rgd.readUInt32LE(0) * 512 + 4);
      // Entry 2 of table 0 points far past the end, in the primary copy only (the copies now differ).
      entry.writeUInt32LE(0xfffffff0);
      fs.writeSync(fd, entry, 0, 4, gt0 + 8);
    } finally {
      fs.closeSync(fd);
    }
    const c = ours('check', 'broken.vmdk');
    expect(c.status).not.toBe(0);
    const said = c.stdout + c.stderr;
    expect(said).toMatch(/used twice/);
    expect(said).toMatch(/redundant copy differ/);
    expect(said).toMatch(/past the end of the file/);
  }, 120_000);
});
