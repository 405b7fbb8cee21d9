/**
 * VHD and VDI (and VHDX) through a real mount, as a user meets them: a mixed folder shows every
 * format; fio write+verify passes on each view; dd writes land, and after unmount `qemu-img
 * compare` finds each image equal to a raw mirror that got the same writes (`qemu-img check`
 * clean where QEMU checks the format); a differencing VHD's parent is read-only while its child
 * is written; the CLI's create/info/check/map speak qemu-img's words for them.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { beforeEach, describe, expect, it } from 'vitest';
import { fioWriteVerify } from '../helpers/fio';
import { CLI, mountFixture } from '../helpers/mount';
import { qemuCheck, qemuCompare } from '../helpers/qemu';

const fx = mountFixture();
let images: string;
const qemuImg = (...a: string[]) => execFileSync('qemu-img', a, { cwd: images, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
const cli = (...a: string[]) => spawnSync(process.execPath, [CLI, ...a], { cwd: images, encoding: 'utf8' });
const MiB = 1 << 20;

beforeEach(() => {
  images = fx.images;
});

/** The same bytes at the same offsets, through the view (dd, fsync'd) and into a raw mirror. */
function ddBoth(view: string, mirror: string, writes: Array<[number, Buffer]>): void {
  for (const [off, data] of writes) {
    const src = path.join(fx.dir, 'chunk');
    fs.writeFileSync(src, data);
    for (const target of [view, mirror])
      execFileSync('dd', [`if=${src}`, `of=${target}`, 'bs=512', `seek=${off / 512}`, 'conv=notrunc,fsync', 'status=none']);
  }
}

const FORMATS = [
  { file: 'd.vhd', fmt: 'vpc', create: ['-f', 'vpc'], checks: false },
  { file: 'f.vhd', fmt: 'vpc', create: ['-f', 'vpc', '-o', 'subformat=fixed'], checks: false },
  { file: 'd.vdi', fmt: 'vdi', create: ['-f', 'vdi'], checks: true },
  { file: 's.vdi', fmt: 'vdi', create: ['-f', 'vdi', '-o', 'static=on'], checks: true },
  { file: 'd.vhdx', fmt: 'vhdx', create: ['-f', 'vhdx', '-o', 'block_size=1M'], checks: true },
  { file: 'f.vhdx', fmt: 'vhdx', create: ['-f', 'vhdx', '-o', 'subformat=fixed,block_size=8M'], checks: true },
];

describe('VHD and VDI through a real mount', () => {
  it('a mixed folder shows every format; fio verify and dd writes; qemu-img compare equal after unmount', async () => {
    qemuImg('create', '-q', '-f', 'qcow2', 'd.qcow2', '64M');
    for (const f of FORMATS) qemuImg('create', '-q', ...f.create, f.file, '64M');
    const m = await fx.mount();
    const names = fs.readdirSync(m.mnt).sort();
    expect(names).toEqual(['d.qcow2.raw', ...FORMATS.map((f) => f.file + '.raw')].sort());
    const writes: Array<[number, Buffer]> = [
      [0, randomBytes(4096)],
      [3 * MiB - 512, randomBytes(8192 + 512)],
      [40 * MiB, randomBytes(2 * MiB + 4096)],
    ];
    for (const [i, f] of FORMATS.entries()) {
      const view = path.join(m.mnt, f.file + '.raw');
      const r = fioWriteVerify(view, 7 + i);
      expect(r.status, `${f.file}: ${r.stderr}`).toBe(0);
      expect(r.job?.error).toBe(0);
      // The mirror starts as the view after fio (read through the mount), then both get dd's writes.
      const mirror = path.join(fx.dir, `${f.file}.mirror`);
      fs.copyFileSync(view, mirror);
      ddBoth(view, mirror, writes);
    }
    expect(await m.unmount()).toBe(0);
    for (const f of FORMATS) {
      const cmp = qemuCompare(path.join(images, f.file), path.join(fx.dir, `${f.file}.mirror`), f.fmt);
      expect(cmp.equal, `${f.file}: ${cmp.output}`).toBe(true);
      if (f.checks) {
        const c = qemuCheck(path.join(images, f.file), f.fmt);
        expect(c.ok, `${f.file}: ${c.output}`).toBe(true);
      }
    }
  });

  it('a differencing VHD made by `vdiskfs create -b`: the parent read-only, the child written, the parent untouched', async () => {
    qemuImg('create', '-q', '-f', 'vpc', 'base.vhd', '32M');
    execFileSync('qemu-io', ['-f', 'vpc', '-c', 'write -P 0x41 0 32M', 'base.vhd'], { cwd: images, stdio: 'pipe' });
    const made = cli('create', '-f', 'vpc', '-b', 'base.vhd', '-F', 'vpc', 'child.vhd');
    expect(made.status, made.stderr).toBe(0);
    const before = fs.readFileSync(path.join(images, 'base.vhd'));
    const m = await fx.mount();
    expect(() => fs.openSync(path.join(m.mnt, 'base.vhd.raw'), 'r+')).toThrow(/EROFS/);
    const fd = fs.openSync(path.join(m.mnt, 'child.vhd.raw'), 'r+');
    fs.writeSync(fd, Buffer.alloc(4096, 0x42), 0, 4096, 5 * MiB);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    const child = fs.readFileSync(path.join(m.mnt, 'child.vhd.raw'));
    expect(child[5 * MiB]).toBe(0x42);
    expect(child[5 * MiB - 1]).toBe(0x41);
    expect(await m.unmount()).toBe(0);
    expect(fs.readFileSync(path.join(images, 'base.vhd')).equals(before)).toBe(true);
    const info = JSON.parse(cli('info', '--output=json', 'child.vhd').stdout) as Record<string, unknown>;
    expect(info['format']).toBe('vpc');
    expect(info['backing-filename']).toBe('base.vhd');
  });

  it('a differencing VHDX made by `vdiskfs create -b`: the parent read-only, the child written, the parent untouched', async () => {
    qemuImg('create', '-q', '-f', 'vhdx', '-o', 'block_size=1M', 'base.vhdx', '32M');
    execFileSync('qemu-io', ['-f', 'vhdx', '-c', 'write -P 0x41 0 32M', 'base.vhdx'], { cwd: images, stdio: 'pipe' });
    const made = cli('create', '-f', 'vhdx', '-o', 'block_size=2M', '-b', 'base.vhdx', '-F', 'vhdx', 'child.avhdx');
    expect(made.status, made.stderr).toBe(0);
    const before = fs.readFileSync(path.join(images, 'base.vhdx'));
    const m = await fx.mount();
    expect(() => fs.openSync(path.join(m.mnt, 'base.vhdx.raw'), 'r+')).toThrow(/EROFS/);
    const fd = fs.openSync(path.join(m.mnt, 'child.avhdx.raw'), 'r+');
    fs.writeSync(fd, Buffer.alloc(4096, 0x42), 0, 4096, 5 * MiB);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    const child = fs.readFileSync(path.join(m.mnt, 'child.avhdx.raw'));
    expect(child[5 * MiB]).toBe(0x42);
    expect(child[5 * MiB - 1]).toBe(0x41);
    expect(child[5 * MiB + 4096]).toBe(0x41);
    expect(await m.unmount()).toBe(0);
    expect(fs.readFileSync(path.join(images, 'base.vhdx')).equals(before)).toBe(true);
    const info = JSON.parse(cli('info', '--output=json', 'child.avhdx').stdout) as Record<string, unknown>;
    expect(info['format']).toBe('vhdx');
    expect(info['backing-filename']).toBe('base.vhdx');
    expect(cli('check', 'child.avhdx').status).toBe(0);
  });

  it('create, info, check and map speak qemu-img: sizes and formats as qemu-img info gives them', () => {
    for (const [file, args] of [
      ['n.vhd', ['-f', 'vpc']],
      ['n-fixed.vhd', ['-f', 'vpc', '-o', 'subformat=fixed']],
      ['n-force.vhd', ['-o', 'force_size=on']],
      ['n.vdi', []],
      ['n-static.vdi', ['-o', 'static=on']],
    ] as const) {
      const r = cli('create', ...args, file, '100M');
      expect(r.status, r.stderr).toBe(0);
      const q = JSON.parse(qemuImg('info', '--output=json', '-f', file.endsWith('.vdi') ? 'vdi' : 'vpc', file)) as Record<string, unknown>;
      const ours = JSON.parse(cli('info', '--output=json', file).stdout) as Record<string, unknown>;
      expect(ours['virtual-size'], file).toBe(q['virtual-size']);
      expect(ours['format'], file).toBe(q['format']);
    }
    expect(cli('check', 'n.vdi').status).toBe(0);
    const map = JSON.parse(cli('map', '--output=json', 'n-static.vdi').stdout) as Array<{ data: boolean }>;
    expect(map.every((x) => x.data)).toBe(true);
  });
});
