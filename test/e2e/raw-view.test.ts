/**
 * The foundation, through a real mount: fio verify, concurrent writers, read-only views, a loop
 * device with ext4 on it, naming and discovery. Raw images (.img, --include-raw) so the FUSE,
 * merger and image layers are tested without a format driver in the way.
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { beforeEach, describe, expect, it } from 'vitest';
import { attachFirstPartition, detach } from '../helpers/loop';
import { mountFixture, type Mounted } from '../helpers/mount';
import { fioWriteVerify } from '../helpers/fio';

const fx = mountFixture();
let images: string;
let mnt: string;
let mounts: Mounted[] = [];

beforeEach(() => {
  ({ images, mnt } = fx);
  mounts = [];
});

async function mountIt(args: string[] = ['--include-raw']): Promise<Mounted> {
  const m = await fx.mount(args);
  mounts.push(m);
  return m;
}

function makeRaw(name: string, size: number): string {
  const p = path.join(images, name);
  fs.mkdirSync(path.dirname(p), { recursive: true });
  fs.writeFileSync(p, '');
  fs.truncateSync(p, size);
  return p;
}

describe('raw views through a real mount', () => {
  it('passes fio write+verify (crc32c) and the bytes land in the image file', async () => {
    const img = makeRaw('disk.img', 64 << 20);
    await mountIt();
    const r = fioWriteVerify(`${mnt}/disk.img.raw`, 42);
    expect(r.status, r.stderr).toBe(0);
    const job = r.job!;
    expect(job.error).toBe(0);
    expect(job.write.io_bytes).toBeGreaterThan(0);
    // Read back through the mount equals the file on disk once flushed.
    const m = mounts[0]!;
    expect(await m.unmount()).toBe(0);
    expect(fs.statSync(img).size).toBe(64 << 20);
  });

  it('serves two writers on two files at once without mixing their data', async () => {
    makeRaw('a.img', 16 << 20);
    makeRaw('sub/b.img', 16 << 20);
    await mountIt();
    const da = randomBytes(8 << 20);
    const db = randomBytes(8 << 20);
    fs.writeFileSync(path.join(fx.dir, 'da'), da);
    fs.writeFileSync(path.join(fx.dir, 'db'), db);
    const dd = (src: string, dst: string, bs: string) =>
      new Promise<number>((res) => {
        const p = spawn('dd', [`if=${src}`, `of=${dst}`, `bs=${bs}`, 'conv=notrunc,fsync', 'status=none']);
        p.on('exit', (c: number) => res(c));
      });
    const codes = await Promise.all([
      dd(path.join(fx.dir, 'da'), `${mnt}/a.img.raw`, '4k'),
      dd(path.join(fx.dir, 'db'), `${mnt}/sub/b.img.raw`, '128k'),
    ]);
    expect(codes).toEqual([0, 0]);
    expect(
      fs
        .readFileSync(`${mnt}/a.img.raw`)
        .subarray(0, 8 << 20)
        .equals(da),
    ).toBe(true);
    expect(
      fs
        .readFileSync(`${mnt}/sub/b.img.raw`)
        .subarray(0, 8 << 20)
        .equals(db),
    ).toBe(true);
    expect(await mounts[0]!.unmount()).toBe(0);
    expect(
      fs
        .readFileSync(path.join(images, 'a.img'))
        .subarray(0, 8 << 20)
        .equals(da),
    ).toBe(true);
    expect(
      fs
        .readFileSync(path.join(images, 'sub/b.img'))
        .subarray(0, 8 << 20)
        .equals(db),
    ).toBe(true);
  });

  it('keeps read-only views read-only: --read-only, and an image file without write permission', async () => {
    makeRaw('rw.img', 1 << 20);
    const ro = makeRaw('ro.img', 1 << 20);
    fs.chmodSync(ro, 0o444);
    await mountIt(['--include-raw']);
    expect(fs.statSync(`${mnt}/ro.img.raw`).mode & 0o777).toBe(0o444);
    expect(() => fs.openSync(`${mnt}/ro.img.raw`, 'r+')).toThrow(/EROFS/);
    const fd = fs.openSync(`${mnt}/rw.img.raw`, 'r+');
    fs.writeSync(fd, Buffer.from('ok'), 0, 2, 0);
    fs.closeSync(fd);
    await mounts.pop()!.cleanup();
    await mountIt(['--include-raw', '--read-only']);
    expect(() => fs.openSync(`${mnt}/rw.img.raw`, 'r+')).toThrow(/EROFS/);
    expect(fs.readFileSync(`${mnt}/rw.img.raw`).subarray(0, 2).toString()).toBe('ok');
  });

  it('loop-mounts a raw view: partition, mkfs.ext4, write a file, fsck -n clean', async () => {
    makeRaw('vm.img', 128 << 20);
    const m = await mountIt();
    const view = `${mnt}/vm.img.raw`;
    execFileSync('sfdisk', ['-q', view], { input: 'label: dos\n,,L\n' });
    const part = await attachFirstPartition(view);
    m.loops.push(...part.loops);
    execFileSync('mkfs.ext4', ['-q', '-F', part.device]);
    const fsMnt = path.join(fx.dir, 'ext4');
    fs.mkdirSync(fsMnt);
    execFileSync('mount', [part.device, fsMnt]);
    fs.writeFileSync(path.join(fsMnt, 'hello.txt'), 'hello from inside a vdiskfs view\n');
    execFileSync('umount', [fsMnt]);
    const fsck = spawnSync('fsck.ext4', ['-n', '-f', part.device], { encoding: 'utf8' });
    expect(fsck.status, fsck.stdout + fsck.stderr).toBe(0);
    detach(part.loops);
    m.loops.length = 0;
    expect(await m.unmount()).toBe(0);
    // The filesystem is in the image file itself: read the file back from it without the mount.
    const direct = await attachFirstPartition(path.join(images, 'vm.img'), true);
    m.loops.push(...direct.loops);
    const cat = execFileSync('debugfs', ['-R', 'cat /hello.txt', direct.device], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    expect(cat).toBe('hello from inside a vdiskfs view\n');
  });

  it('mirrors folders, shows images added later, leaves out a file whose content and name disagree', async () => {
    makeRaw('one.img', 1 << 20);
    // A qcow2 header inside a file named .img is never opened as qcow2: refused, with a log line.
    const fake = path.join(images, 'fake.img');
    const head = Buffer.alloc(4096);
    head.write('QFI\xfb', 0, 'latin1');
    fs.writeFileSync(fake, head);
    const m = await mountIt();
    expect(fs.readdirSync(mnt).sort()).toEqual(['one.img.raw']);
    makeRaw('deep/er/two.img', 2 << 20);
    expect(fs.readdirSync(mnt).sort()).toEqual(['deep', 'one.img.raw']);
    expect(fs.readdirSync(`${mnt}/deep/er`)).toEqual(['two.img.raw']);
    expect(fs.statSync(`${mnt}/deep/er/two.img.raw`).size).toBe(2 << 20);
    fs.rmSync(path.join(images, 'one.img'));
    expect(fs.readdirSync(mnt)).toEqual(['deep']);
    expect(await m.waitForLog(/left out fake/)).toMatch(/left out fake\.img: content is qcow2 but the name says \.img/);
    expect(m.stderr().match(/left out fake\.img/g)).toHaveLength(1);
  });

  it('reports the space really used in st_blocks (du tells the truth)', async () => {
    makeRaw('sparse.img', 256 << 20);
    await mountIt();
    expect(fs.statSync(`${mnt}/sparse.img.raw`).size).toBe(256 << 20);
    expect(fs.statSync(`${mnt}/sparse.img.raw`).blocks).toBe(0);
    const fd = fs.openSync(`${mnt}/sparse.img.raw`, 'r+');
    fs.writeSync(fd, randomBytes(1 << 20), 0, 1 << 20, 0);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    expect(fs.statSync(`${mnt}/sparse.img.raw`).blocks * 512).toBeGreaterThanOrEqual(1 << 20);
  });

  it('a folder of 1000 images mounts at once: nothing is opened until used', async () => {
    for (let i = 0; i < 1000; i++) makeRaw(`many/d${i}.img`, 1 << 20);
    const m = await mountIt(['--include-raw', '--debug']);
    expect(m.stderr()).not.toMatch(/vdiskfs:image open/);
    expect(fs.readdirSync(`${mnt}/many`)).toHaveLength(1000);
  });
});
