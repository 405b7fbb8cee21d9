import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Confinement, openImage, probeImage, MAX_CHAIN_DEPTH } from '../../src/image';

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-image-'));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));
const qemuImg = (...a: string[]) => execFileSync('qemu-img', a, { cwd: dir, stdio: 'pipe' });

describe('probing', () => {
  it('finds the format from content, and the extension must agree', async () => {
    qemuImg('create', '-f', 'qcow2', 'a.qcow2', '1M');
    qemuImg('create', '-f', 'vmdk', 'b.vmdk', '1M');
    expect((await probeImage(path.join(dir, 'a.qcow2'))).driver.name).toBe('qcow2');
    expect((await probeImage(path.join(dir, 'b.vmdk'))).driver.name).toBe('vmdk');
    fs.copyFileSync(path.join(dir, 'a.qcow2'), path.join(dir, 'guest.img'));
    fs.copyFileSync(path.join(dir, 'a.qcow2'), path.join(dir, 'wrong.vmdk'));
    await expect(probeImage(path.join(dir, 'guest.img'))).rejects.toThrow(/content is qcow2 but the name says \.img/);
    await expect(probeImage(path.join(dir, 'wrong.vmdk'))).rejects.toThrow(/content is qcow2 but the name says \.vmdk \(vmdk\)/);
  });
});

describe('backing chains', () => {
  it('opens a chain, backing files read-only, names resolved against the image folder', async () => {
    qemuImg('create', '-f', 'raw', 'base.raw', '1M');
    qemuImg('create', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', 'top.qcow2');
    const img = await openImage(path.join(dir, 'top.qcow2'), { writable: true });
    expect(img.readOnly).toBe(false);
    expect(img.virtualSize).toBe(1 << 20);
    await img.close();
  });

  it('refuses a chain that loops back on itself', async () => {
    qemuImg('create', '-f', 'qcow2', 'a.qcow2', '1M');
    qemuImg('create', '-f', 'qcow2', '-b', 'a.qcow2', '-F', 'qcow2', 'b.qcow2');
    // Point a.qcow2 at b.qcow2 without qemu-img's own loop check.
    qemuImg('rebase', '-u', '-f', 'qcow2', '-b', 'b.qcow2', '-F', 'qcow2', 'a.qcow2');
    await expect(openImage(path.join(dir, 'b.qcow2'), { writable: false })).rejects.toThrow(/loops back/);
  });

  it('refuses a chain deeper than MAX_CHAIN_DEPTH', async () => {
    qemuImg('create', '-f', 'raw', 'l0.raw', '64k');
    let prev = 'l0.raw';
    let fmt = 'raw';
    for (let i = 1; i <= MAX_CHAIN_DEPTH + 1; i++) {
      qemuImg('create', '-f', 'qcow2', '-b', prev, '-F', fmt, '-u', `l${i}.qcow2`, '64k');
      prev = `l${i}.qcow2`;
      fmt = 'qcow2';
    }
    await expect(openImage(path.join(dir, prev), { writable: false })).rejects.toThrow(/deeper than/);
  });
});

describe('a path a listing found (realPath)', () => {
  it('skips realpath(3) but still refuses a file outside the confinement, or a symlink in its place', async () => {
    const images = path.join(dir, 'images');
    fs.mkdirSync(images);
    qemuImg('create', '-f', 'qcow2', 'outside.qcow2', '1M');
    qemuImg('create', '-f', 'qcow2', path.join('images', 'in.qcow2'), '1M');
    fs.symlinkSync(path.join(dir, 'outside.qcow2'), path.join(images, 'link.qcow2'));
    const confinement = await Confinement.create(images);
    const open = (file: string) => openImage(file, { writable: false, confinement, realPath: true });
    const img = await open(path.join(images, 'in.qcow2'));
    expect(img.virtualSize).toBe(1 << 20);
    await img.close();
    await expect(open(path.join(dir, 'outside.qcow2'))).rejects.toThrow(/leads outside/);
    await expect(open(path.join(images, 'link.qcow2'))).rejects.toThrow(/symlink/); // O_NOFOLLOW: never followed
  });
});
