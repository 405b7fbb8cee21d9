/**
 * QEMU's image-lock protocol, against QEMU itself: qemu-io / qemu-img see our locks, we see theirs.
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ImageLock, lockImage, writerElsewhere } from '../../src/image';
import { PERM_RESIZE } from '../../src/image/locks';

let dir = '';
let img = '';
const locks: ImageLock[] = [];
const procs: ChildProcess[] = [];

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-locks-'));
  img = path.join(dir, 'vm.qcow2');
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', img, '16M']);
});

afterEach(async () => {
  for (const l of locks.splice(0)) await l.close();
  for (const p of procs.splice(0)) {
    if (p.exitCode === null && p.signalCode === null) {
      const gone = new Promise((r) => p.once('exit', r));
      p.kill('SIGKILL');
      await gone;
    }
  }
  fs.rmSync(dir, { recursive: true, force: true });
});

async function lockOf(paths: string[]): Promise<ImageLock> {
  const l = await ImageLock.open(paths);
  locks.push(l);
  return l;
}

const qemuIo = (file: string, cmd: string, ...opts: string[]) => spawnSync('qemu-io', [...opts, '-c', cmd, file], { encoding: 'utf8' });
const qemuImgInfo = (file: string, ...opts: string[]) => spawnSync('qemu-img', ['info', ...opts, file], { encoding: 'utf8' });

/** qemu-io holding the image open for writing until killed; resolves once its locks are in place. */
async function qemuWriter(file: string): Promise<ChildProcess> {
  const p = spawn('qemu-io', ['-c', 'sleep 600000', file], { stdio: 'ignore' });
  procs.push(p);
  const probe = await lockOf([file]);
  // QEMU takes its bytes one by one while it opens the image: wait for the last, 203 "resize not shared".
  for (let i = 0; i < 200 && !probe.test({ perm: PERM_RESIZE, unshared: 0 }); i++) await new Promise((r) => setTimeout(r, 25));
  expect(probe.test({ perm: PERM_RESIZE, unshared: 0 })).toMatch(/Failed to get "resize" lock/);
  return p;
}

describe('QEMU sees our locks', () => {
  it('a writer lock makes qemu-io refuse to write and qemu-img info refuse without -U', async () => {
    const l = await lockOf([img]);
    expect(l.set('write')).toBeUndefined();
    const w = qemuIo(img, 'write 0 4k');
    expect(w.status).not.toBe(0);
    expect(w.stderr).toMatch(/Failed to get "write" lock/);
    const info = qemuImgInfo(img);
    expect(info.status).not.toBe(0);
    expect(info.stderr).toMatch(/Failed to get shared "write" lock/);
    expect(qemuImgInfo(img, '-U').status).toBe(0);
    // Dropping to a reader lets QEMU write again.
    expect(l.set('read')).toBeUndefined();
    expect(qemuIo(img, 'write 0 4k').status).toBe(0);
  });

  it('a reader lock (shared read, as qemu-img) lets qemu-img info in, and keeps qemu-io writers out', async () => {
    const l = await lockOf([img]);
    expect(l.set('sharedRead')).toBeUndefined();
    expect(qemuImgInfo(img).status).toBe(0);
    expect(qemuIo(img, 'write 0 4k').stderr).toMatch(/Failed to get "write" lock/);
    await l.close();
    expect(qemuIo(img, 'write 0 4k').status).toBe(0); // closing drops everything
  });

  it('every host file of a VMDK is locked', async () => {
    const vmdk = path.join(dir, 'split.vmdk');
    execFileSync('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', 'subformat=twoGbMaxExtentSparse', vmdk, '16M']);
    const extent = path.join(dir, 'split-s001.vmdk');
    const l = await lockOf([extent]); // the extent only: QEMU's open of the extent file fails
    expect(l.set('write')).toBeUndefined();
    expect(qemuIo(vmdk, 'write 0 4k').stderr).toMatch(/Failed to get "write" lock/);
  });
});

describe("we see QEMU's locks", () => {
  it('an image qemu-io writes: no writer lock for us, a plain reader lock yes', async () => {
    await qemuWriter(img);
    const l = await lockOf([img]);
    expect(l.set('write')).toBe(`${img}: Failed to get "write" lock`);
    expect(l.mode).toBeUndefined(); // a failed set keeps what was held before: nothing
    expect(l.set('sharedRead')).toBe(`${img}: Failed to get shared "write" lock`);
    expect(l.set('read')).toBeUndefined();
    expect(l.set('write')).toMatch(/Failed to get "write" lock/);
    expect(l.mode).toEqual({ perm: 1, unshared: 0 }); // still the reader lock
    expect(await writerElsewhere([img])).toMatch(/Failed to get "write" lock/);
    await expect(lockImage([img], 'sharedRead')).rejects.toThrow(
      /Failed to get shared "write" lock\. Is another process using the image\? \(-U reads it anyway\)/,
    );
    await expect(lockImage([img], 'write')).rejects.toMatchObject({ code: 'EBUSY' });
  });

  it('once QEMU is gone, the writer lock is ours', async () => {
    const p = await qemuWriter(img);
    const l = await lockOf([img]);
    expect(l.set('read')).toBeUndefined();
    const gone = new Promise((r) => p.once('exit', r));
    p.kill('SIGKILL');
    await gone;
    expect(await writerElsewhere([img])).toBeUndefined();
    expect(l.set('write')).toBeUndefined(); // upgraded in place
    expect(qemuIo(img, 'write 0 4k').stderr).toMatch(/Failed to get "write" lock/);
  });
});

/** The lock bytes held on `file`, from /proc/locks (adjacent bytes merge into one range there). */
function heldBytes(file: string): number[] {
  const ino = fs.statSync(file).ino;
  const bytes: number[] = [];
  for (const line of fs.readFileSync('/proc/locks', 'utf8').split('\n')) {
    const f = line.trim().split(/\s+/);
    if (!f[5]?.endsWith(`:${ino}`) || line.includes('->')) continue;
    for (let b = Number(f[6]); b <= Number(f[7]); b++) bytes.push(b);
  }
  return bytes.sort((a, b) => a - b);
}

describe('the same bytes as QEMU', () => {
  it('our writer holds exactly what a qemu-io writer holds', async () => {
    const p = await qemuWriter(img);
    const qemus = heldBytes(img);
    expect(qemus).toEqual([100, 101, 103, 201, 203]);
    const gone = new Promise((r) => p.once('exit', r));
    p.kill('SIGKILL');
    await gone;
    const l = await lockOf([img]);
    expect(l.set('write')).toBeUndefined();
    expect(heldBytes(img)).toEqual(qemus);
    expect(l.set('read')).toBeUndefined();
    expect(heldBytes(img)).toEqual([100]);
  });
});

describe('between vdiskfs users', () => {
  it('two writers exclude each other; readers share; locks move both ways', async () => {
    const a = await lockOf([img]);
    const b = await lockOf([img]);
    expect(a.set('write')).toBeUndefined();
    expect(b.set('write')).toMatch(/Failed to get "write" lock/);
    expect(b.set('read')).toBeUndefined();
    expect(a.test('write')).toBeUndefined(); // a plain reader does not stop a writer
    expect(b.test('sharedRead')).toMatch(/Failed to get shared "write" lock/);
    expect(a.set('read')).toBeUndefined(); // writer steps down
    expect(b.set('write')).toBeUndefined();
    expect(a.set('write')).toMatch(/Failed to get "write" lock/);
  });

  it('an image that cannot be opened (a FIFO) is refused before any lock, without blocking', async () => {
    const fifo = path.join(dir, 'pipe');
    execFileSync('mkfifo', [fifo]);
    await expect(ImageLock.open([img, fifo])).rejects.toThrow(/special file|not a regular file/);
    expect(qemuIo(img, 'write 0 4k').status).toBe(0); // the lock fd of img was closed again
  });
});
