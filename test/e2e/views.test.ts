/**
 * View rules that need more than one image or a format's features, through a real mount:
 * snapshot views, backing files protected, truncate to grow, and the CLI's info/check/map
 * against qemu-img's.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { beforeEach, describe, expect, it } from 'vitest';
import { CLI, mountFixture, type Mounted } from '../helpers/mount';
import { sha256File } from '../helpers/qemu';

const fx = mountFixture();
let images: string;
let dir: { path: string };
let m: Mounted | undefined;
const qemuImg = (...a: string[]) => execFileSync('qemu-img', a, { cwd: images, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
const qemuIo = (file: string, ...cmds: string[]) =>
  execFileSync('qemu-io', [...cmds.flatMap((c) => ['-c', c]), file], { cwd: images, stdio: 'pipe' });
const cli = (...a: string[]) => spawnSync(process.execPath, [CLI, ...a], { cwd: images, encoding: 'utf8' });

beforeEach(() => {
  images = fx.images;
  dir = { path: fx.dir };
  m = undefined;
});

describe('views of qcow2 features', () => {
  it('shows each internal snapshot read-only, with the content it had', async () => {
    qemuImg('create', '-f', 'qcow2', 's.qcow2', '16M');
    qemuIo('s.qcow2', 'write -P 0x61 0 4M');
    qemuImg('snapshot', '-c', 'first', 's.qcow2');
    qemuIo('s.qcow2', 'write -P 0x62 1M 1M');
    qemuImg('convert', '-l', 'snapshot.name=first', '-O', 'raw', 's.qcow2', path.join(dir.path, 'first.raw'));
    m = await fx.mount();
    expect(fs.readdirSync(m.mnt).sort()).toEqual(['s.qcow2.raw', 's.qcow2@first.raw']);
    const snap = path.join(m.mnt, 's.qcow2@first.raw');
    expect(fs.statSync(snap).mode & 0o777).toBe(0o444);
    expect(() => fs.openSync(snap, 'r+')).toThrow(/EROFS/);
    expect(sha256File(snap)).toBe(sha256File(path.join(dir.path, 'first.raw')));
    // qemu-img itself can use a view as a raw image.
    expect(
      execFileSync('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', snap, path.join(dir.path, 'first.raw')], { encoding: 'utf8' }),
    ).toMatch(/Images are identical/);
    expect(
      fs
        .readFileSync(path.join(m.mnt, 's.qcow2.raw'))
        .subarray(1 << 20, (1 << 20) + 4)
        .toString(),
    ).toBe('bbbb');
  });

  it('keeps a backing file read-only while an overlay in the tree uses it', async () => {
    qemuImg('create', '-f', 'qcow2', 'base.qcow2', '8M');
    qemuImg('create', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'overlay.qcow2');
    m = await fx.mount();
    expect(() => fs.openSync(path.join(m!.mnt, 'base.qcow2.raw'), 'r+')).toThrow(/EROFS/);
    const fd = fs.openSync(path.join(m.mnt, 'overlay.qcow2.raw'), 'r+');
    fs.writeSync(fd, Buffer.from('top'), 0, 3, 0);
    fs.closeSync(fd);
    await m.cleanup();
    expect(qemuImg('check', 'base.qcow2')).toMatch(/No errors/);
    expect(qemuImg('check', 'overlay.qcow2')).toMatch(/No errors/);
  });

  it('grows an image when its view is truncated larger, and refuses to shrink it', async () => {
    qemuImg('create', '-f', 'qcow2', 'g.qcow2', '8M');
    m = await fx.mount();
    const view = path.join(m.mnt, 'g.qcow2.raw');
    fs.truncateSync(view, 64 << 20);
    expect(fs.statSync(view).size).toBe(64 << 20);
    expect(() => fs.truncateSync(view, 1 << 20)).toThrow(/EINVAL/);
    const fd = fs.openSync(view, 'r+');
    fs.writeSync(fd, Buffer.from('end'), 0, 3, (64 << 20) - 3);
    fs.closeSync(fd);
    expect(await m.waitForLog(/refused to shrink/)).toMatch(/conv=notrunc/);
    await m.cleanup();
    expect(JSON.parse(qemuImg('info', '--output=json', 'g.qcow2'))['virtual-size']).toBe(64 << 20);
    expect(qemuImg('check', 'g.qcow2')).toMatch(/No errors/);
  });
});

describe('the CLI speaks qemu-img', () => {
  it('create makes images qemu-img checks clean; info, check and map agree with qemu-img', () => {
    expect(cli('create', '-f', 'qcow2', '-o', 'cluster_size=4k,lazy_refcounts=on', 'c.qcow2', '32M').status).toBe(0);
    expect(cli('create', '-f', 'vmdk', '-o', 'subformat=twoGbMaxExtentSparse', 'd.vmdk', '3G').status).toBe(0);
    expect(cli('create', '-f', 'qcow2', '-b', 'c.qcow2', '-F', 'qcow2', 'o.qcow2').status).toBe(0);
    for (const f of ['c.qcow2', 'd.vmdk', 'o.qcow2']) expect(qemuImg('check', f)).toMatch(/No errors/);
    qemuIo('o.qcow2', 'write -P 0x11 0 64k', 'write -z 1M 64k');
    const ours = JSON.parse(cli('info', '--output=json', 'o.qcow2').stdout);
    const theirs = JSON.parse(qemuImg('info', '--output=json', 'o.qcow2'));
    for (const k of ['virtual-size', 'cluster-size', 'format', 'backing-filename', 'backing-filename-format', 'dirty-flag'])
      expect(ours[k], k).toEqual(theirs[k]);
    expect(ours['format-specific'].data['lazy-refcounts']).toBe(theirs['format-specific'].data['lazy-refcounts']);
    const vm = JSON.parse(cli('info', '--output=json', 'd.vmdk').stdout);
    expect(vm['format-specific'].data.extents).toHaveLength(2);
    const check = cli('check', 'o.qcow2');
    expect(check.status).toBe(0);
    expect(check.stdout).toMatch(/No errors were found on the image/);
    const map = JSON.parse(cli('map', '--output=json', 'o.qcow2').stdout) as Array<{
      start: number;
      length: number;
      data: boolean;
      zero: boolean;
    }>;
    const first = map[0]!;
    expect(first).toMatchObject({ start: 0, length: 65536, data: true, zero: false });
    expect(cli('info', 'nope.qcow2').stderr).toMatch(/^vdiskfs: .*nope\.qcow2/);
  });
});
