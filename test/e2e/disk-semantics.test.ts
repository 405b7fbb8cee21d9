/**
 * Views behave like disks, through a real mount: fstrim on ext4 on a loop device on a qcow2 view
 * gives the space back (three fill/delete/trim rounds, the image stops growing), SEEK_DATA /
 * SEEK_HOLE agree with qemu-img map (qcow2, VMDK, a backing chain), fallocate modes, and cp /
 * qemu-img convert -n write into a view without changing its size (O_TRUNC is ignored).
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { beforeEach, describe, expect, it } from 'vitest';
import { mountFixture, type Mounted } from '../helpers/mount';
import { qemuCheck, sha256, sha256File } from '../helpers/qemu';

const fx = mountFixture();
let images: string;
const MiB = 1 << 20;
const sh = (cmd: string, args: string[], cwd?: string) =>
  execFileSync(cmd, args, { cwd: cwd ?? images, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
const qemuImg = (...a: string[]) => sh('qemu-img', a);
const qemuIo = (file: string, ...cmds: string[]) => sh('qemu-io', [...cmds.flatMap((c) => ['-c', c]), file]);

beforeEach(() => {
  images = fx.images;
});
/** FALLOCATE, LSEEK and atomic O_TRUNC exist only in the kernel-protocol transport (fuse-native has no such operations). */
const mountKernel = (args: string[] = []) => fx.mount(['--transport', 'kernel', ...args]);

/** Data ranges of a file as SEEK_DATA/SEEK_HOLE report them (python: node has no SEEK_DATA). */
function seekRanges(file: string): Array<[number, number]> {
  const py = `
import os, sys, json
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
out, pos = [], 0
while pos < size:
    try:
        d = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError:
        break
    h = os.lseek(fd, d, os.SEEK_HOLE)
    out.append([d, h])
    pos = h
print(json.dumps(out))`;
  return JSON.parse(sh('python3', ['-c', py, file])) as Array<[number, number]>;
}

/** qemu-img map's data ranges (any depth of the chain), adjacent ones joined. */
function qemuDataRanges(file: string): Array<[number, number]> {
  const rows = JSON.parse(qemuImg('map', '--output=json', '-U', file)) as Array<{ start: number; length: number; data: boolean }>;
  const out: Array<[number, number]> = [];
  for (const r of rows) {
    if (!r.data) continue;
    const last = out[out.length - 1];
    if (last && last[1] === r.start) last[1] += r.length;
    else out.push([r.start, r.start + r.length]);
  }
  return out;
}

function duBytes(file: string): number {
  return fs.statSync(file).blocks * 512;
}

describe('discard through a loop device', () => {
  it('three rounds of fill, delete, fstrim on ext4: the image stops growing and du follows ext4', async () => {
    qemuImg('create', '-q', '-f', 'qcow2', 'vm.qcow2', '2G');
    const m: Mounted = await mountKernel();
    const img = path.join(images, 'vm.qcow2');
    const loop = sh('losetup', ['--show', '-f', path.join(m.mnt, 'vm.qcow2.raw')]).trim();
    m.loops.push(loop);
    const fsDir = path.join(fx.dir, 'ext4');
    fs.mkdirSync(fsDir);
    sh('mkfs.ext4', ['-q', loop]);
    sh('mount', [loop, fsDir]);
    const sizes: number[] = [];
    const dus: number[] = [];
    try {
      for (let round = 0; round < 3; round++) {
        // 800 MiB of non-zero data in large blocks (zeros would become zero clusters).
        sh('bash', ['-c', `yes vdiskfs-fstrim-round-${round} | head -c ${800 * MiB} > ${fsDir}/fill`]);
        sh('sync', []);
        fs.rmSync(path.join(fsDir, 'fill'));
        sh('sync', []); // ext4 frees the blocks once the deletion is committed; fstrim skips uncommitted frees
        sh('fstrim', [fsDir]);
        sh('sync', []);
        sizes.push(fs.statSync(img).size);
        dus.push(duBytes(img));
      }
      const used = Number(sh('df', ['-k', '--output=used', fsDir]).split('\n')[1]) * 1024;
      expect(sizes[0]).toBeGreaterThan(800 * MiB);
      expect(sizes[2]! - sizes[0]!).toBeLessThan(64 * MiB);
      // du of the image drops to about what ext4 still uses (plus qcow2 and ext4 metadata).
      for (const d of dus) expect(d).toBeLessThan(used + 64 * MiB);
    } finally {
      sh('umount', [fsDir]);
    }
    sh('e2fsck', ['-fn', loop]);
    sh('losetup', ['-d', loop]);
    m.loops.length = 0;
    expect(await m.unmount()).toBe(0);
    const check = qemuCheck(img);
    expect(check.ok, check.output).toBe(true);
  }, 240_000);
});

describe('SEEK_DATA / SEEK_HOLE agree with qemu-img map', () => {
  it('qcow2 (data, zero clusters, discarded ranges), VMDK, and a backing chain', async () => {
    qemuImg('create', '-q', '-f', 'qcow2', 'q.qcow2', '256M');
    qemuIo('q.qcow2', 'write -P 1 0 3M', 'write -z 8M 4M', 'write -P 2 100M 5M', 'write -P 3 255M 1M');
    qemuImg('create', '-q', '-f', 'vmdk', 'v.vmdk', '64M');
    qemuIo('v.vmdk', 'write -P 4 1M 2M', 'write -P 5 40M 64k');
    qemuImg('create', '-q', '-f', 'qcow2', 'base.qcow2', '64M');
    qemuIo('base.qcow2', 'write -P 6 0 8M', 'write -P 7 32M 8M');
    qemuImg('create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'top.qcow2', '96M');
    qemuIo('top.qcow2', 'write -P 8 4M 8M', 'write -z 34M 2M', 'write -P 9 80M 1M');
    const m = await mountKernel();
    for (const name of ['q.qcow2', 'v.vmdk', 'top.qcow2']) {
      expect(seekRanges(path.join(m.mnt, `${name}.raw`)), name).toEqual(qemuDataRanges(path.join(images, name)));
    }
    // A discard through the view becomes a hole.
    sh('fallocate', ['-p', '-o', String(1 * MiB), '-l', String(1 * MiB), path.join(m.mnt, 'q.qcow2.raw')]);
    const ranges = seekRanges(path.join(m.mnt, 'q.qcow2.raw'));
    expect(ranges[0]).toEqual([0, 1 * MiB]);
    expect(ranges[1]![0]).toBe(2 * MiB);
    expect(await m.unmount()).toBe(0);
    expect(qemuDataRanges(path.join(images, 'q.qcow2'))).toEqual(ranges);
  }, 120_000);
});

describe('fallocate modes on a view', () => {
  it('punch-hole and zero-range read zeros, mode 0 inside succeeds, growing works for qcow2 and within a VMDK grain directory, else ENOSPC', async () => {
    qemuImg('create', '-q', '-f', 'qcow2', 'g.qcow2', '64M');
    qemuImg('create', '-q', '-f', 'vmdk', 'g.vmdk', '48M'); // its grain directory reaches 64 MiB
    qemuIo('g.qcow2', 'write -P 0x41 0 8M');
    const m = await mountKernel();
    const q = path.join(m.mnt, 'g.qcow2.raw');
    sh('fallocate', ['-p', '-o', '4096', '-l', String(MiB), q]);
    sh('fallocate', ['-z', '-o', String(4 * MiB), '-l', String(MiB), q]);
    sh('fallocate', ['-o', '0', '-l', String(MiB), q]);
    const head = Buffer.alloc(6 * MiB);
    const fd = fs.openSync(q, 'r');
    fs.readSync(fd, head, 0, head.length, 0);
    fs.closeSync(fd);
    const want = Buffer.alloc(6 * MiB, 0x41);
    want.fill(0, 4096, 4096 + MiB);
    want.fill(0, 4 * MiB, 5 * MiB);
    expect(head.equals(want)).toBe(true);
    sh('fallocate', ['-l', String(96 * MiB), q]);
    expect(fs.statSync(q).size).toBe(96 * MiB);
    const v = path.join(m.mnt, 'g.vmdk.raw');
    sh('fallocate', ['-l', String(64 * MiB), v]);
    expect(fs.statSync(v).size).toBe(64 * MiB);
    expect(() => sh('fallocate', ['-l', String(96 * MiB), v])).toThrow(/No space left/);
    expect(fs.statSync(v).size).toBe(64 * MiB);
    expect(await m.unmount()).toBe(0);
    expect(qemuCheck(path.join(images, 'g.qcow2')).ok).toBe(true);
    expect(JSON.parse(qemuImg('info', '--output=json', 'g.qcow2'))['virtual-size']).toBe(96 * MiB);
    expect(JSON.parse(qemuImg('info', '--output=json', 'g.vmdk'))['virtual-size']).toBe(64 * MiB);
    expect(qemuCheck(path.join(images, 'g.vmdk'), 'vmdk').ok).toBe(true);
  }, 60_000);
});

// The writeback cache owns the size in the kernel: O_TRUNC must not make the view look empty there either.
const cacheModes = [[], ['--writeback-cache']].map((args) => ({ args, name: args.join(' ') || 'no writeback cache' }));

describe.each(cacheModes)('cp and qemu-img convert into a view ($name)', ({ args: mountArgs }) => {
  it('write the bytes and keep the view size (O_TRUNC is ignored; truncating smaller is still refused)', async () => {
    qemuImg('create', '-q', '-f', 'qcow2', 'dst.qcow2', '64M');
    qemuIo('dst.qcow2', 'write -P 0x77 40M 1M'); // past the copied bytes: must survive
    const src = path.join(fx.dir, 'src.raw');
    const data = Buffer.alloc(16 * MiB);
    for (let i = 0; i < data.length; i += 4096) data.fill(((i / 4096) % 251) + 1, i, i + 4096);
    fs.writeFileSync(src, data);
    const m = await mountKernel(mountArgs);
    const view = path.join(m.mnt, 'dst.qcow2.raw');
    sh('cp', [src, view]);
    expect(fs.statSync(view).size).toBe(64 * MiB);
    const expected = Buffer.alloc(64 * MiB);
    data.copy(expected);
    expected.fill(0x77, 40 * MiB, 41 * MiB);
    expect(fs.readFileSync(view).equals(expected)).toBe(true);
    // qemu-img convert -n into the view: same again with other bytes.
    const src2 = path.join(fx.dir, 'src2.qcow2');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', src2, '64M']);
    sh('qemu-io', ['-c', 'write -P 0x33 0 2M', '-c', 'write -P 0x34 50M 1M', src2]);
    sh('qemu-img', ['convert', '-n', '-O', 'raw', src2, view]);
    expect(fs.statSync(view).size).toBe(64 * MiB);
    const after = Buffer.alloc(64 * MiB);
    after.fill(0x33, 0, 2 * MiB);
    after.fill(0x34, 50 * MiB, 51 * MiB);
    expect(sha256File(view)).toBe(sha256(after));
    // An explicit truncate to a smaller size is still refused; growing still works.
    expect(() => fs.truncateSync(view, MiB)).toThrow(/EINVAL/);
    fs.truncateSync(view, 80 * MiB);
    expect(fs.statSync(view).size).toBe(80 * MiB);
    // cp --sparse=always out of the view reproduces it.
    const back = path.join(fx.dir, 'back.raw');
    sh('cp', ['--sparse=always', view, back]);
    expect(sha256File(back)).toBe(sha256File(view));
    expect(await m.unmount()).toBe(0);
    expect(qemuCheck(path.join(images, 'dst.qcow2')).ok).toBe(true);
  }, 120_000);
});
