/**
 * QEMU's image locks through a real mount, both ways: views of an image QEMU writes are
 * read-only (0444), QEMU refuses an image a view writes, two mounts never write one image, the
 * CLI behaves like qemu-img on a locked image, and nobody else's hung FUSE server can stall us.
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { trackPid } from '../helpers/pids';
import { CLI, isMounted, mount, mountFixture } from '../helpers/mount';
import { ImageLock } from '../../src/image';

const fx = mountFixture();
let images: string;
const procs: ChildProcess[] = [];
const exportMounts: string[] = [];

const qemuImg = (...a: string[]) => spawnSync('qemu-img', a, { cwd: images, encoding: 'utf8' });
const qemuIo = (file: string, cmd: string) => spawnSync('qemu-io', ['-c', cmd, file], { cwd: images, encoding: 'utf8' });
const cli = (...a: string[]) => spawnSync(process.execPath, [CLI, ...a], { cwd: images, encoding: 'utf8' });
const modeOf = (p: string) => fs.statSync(p).mode & 0o777;

beforeEach(() => {
  images = fx.images;
});

afterEach(async () => {
  // Stopped daemons first get SIGCONT, so nothing waits on them while the rest shuts down.
  for (const p of procs) if (p.pid && p.exitCode === null) p.kill('SIGCONT');
  for (const p of procs.splice(0).reverse()) {
    if (p.exitCode !== null || p.signalCode !== null) continue;
    const gone = new Promise((r) => p.once('exit', r));
    p.kill('SIGKILL');
    await gone;
  }
  for (const m of exportMounts.splice(0)) {
    if (isMounted(m))
      try {
        execFileSync('umount', ['-l', m], { stdio: 'ignore' });
      } catch {
        /* gone with its daemon */
      }
  }
});

function track(p: ChildProcess): ChildProcess {
  procs.push(p);
  trackPid(p.pid);
  return p;
}

/** Waits until someone holds QEMU's "write not shared" byte on `file` (QEMU takes its bytes one by one). */
async function waitForWriterLock(file: string): Promise<void> {
  const probe = await ImageLock.open([file]);
  try {
    for (let i = 0; i < 400 && !probe.test({ perm: 0x2, unshared: 0 }); i++) await new Promise((r) => setTimeout(r, 25));
    expect(probe.test({ perm: 0x2, unshared: 0 })).toMatch(/Failed to get "write" lock/);
  } finally {
    await probe.close();
  }
}

/** qemu-storage-daemon holding `image` open for writing (an NBD export), as a running VM would. */
async function qemuWriting(image: string): Promise<ChildProcess> {
  const p = track(
    spawn(
      'qemu-storage-daemon',
      [
        '--blockdev',
        `driver=file,node-name=f,filename=${image}`,
        '--blockdev',
        'driver=qcow2,node-name=q,file=f',
        '--nbd-server',
        `addr.type=unix,addr.path=${path.join(fx.dir, `nbd-${procs.length}.sock`)}`,
        '--export',
        'type=nbd,id=e,node-name=q,writable=on',
      ],
      { stdio: 'ignore' },
    ),
  );
  await waitForWriterLock(image);
  return p;
}

/**
 * Waits until nobody writes `file` any more. close(2) on a view returns before the mount has
 * processed the release (FUSE sends it asynchronously), and the release drops the locks.
 */
async function waitForNoWriter(file: string): Promise<void> {
  const probe = await ImageLock.open([file]);
  try {
    for (let i = 0; i < 400 && probe.test('write'); i++) await new Promise((r) => setTimeout(r, 25));
    expect(probe.test('write')).toBeUndefined();
  } finally {
    await probe.close();
  }
}

async function stop(p: ChildProcess): Promise<void> {
  const gone = new Promise((r) => p.once('exit', r));
  p.kill('SIGKILL');
  await gone;
}

describe('QEMU writes, vdiskfs reads', () => {
  it('a view of an image qemu-storage-daemon writes is read-only (0444, EROFS) and readable; writable again once QEMU is gone', async () => {
    qemuImg('create', '-q', '-f', 'qcow2', 'vm.qcow2', '16M');
    const qsd = await qemuWriting(path.join(images, 'vm.qcow2'));
    const m = await fx.mount();
    const view = path.join(m.mnt, 'vm.qcow2.raw');
    expect(modeOf(view)).toBe(0o444);
    expect(() => fs.openSync(view, 'r+')).toThrow(/EROFS/);
    expect(() => fs.truncateSync(view, 32 << 20)).toThrow(/EROFS/);
    const fd = fs.openSync(view, 'r'); // reading keeps working, and while it is open...
    try {
      expect(fs.readSync(fd, Buffer.alloc(4096), 0, 4096, 0)).toBe(4096);
      expect(modeOf(view)).toBe(0o444); // ...the open view still says read-only
      expect(() => fs.openSync(view, 'r+')).toThrow(/EROFS/);
      await stop(qsd);
      fs.closeSync(fs.openSync(view, 'r+')); // the open image is upgraded in place
      // The kernel keeps attributes for attr_timeout (1 s): wait for a fresh getattr.
      for (let i = 0; i < 100 && modeOf(view) !== 0o644; i++) await new Promise((r) => setTimeout(r, 50));
      expect(modeOf(view)).toBe(0o644);
    } finally {
      fs.closeSync(fd);
    }
  });
});

describe('vdiskfs writes, QEMU and the CLI are kept out', () => {
  it('qemu-io, qemu-img info and vdiskfs info/check refuse an image a view has open for writing; -U reads it', async () => {
    qemuImg('create', '-q', '-f', 'qcow2', 'w.qcow2', '16M');
    const m = await fx.mount();
    const fd = fs.openSync(path.join(m.mnt, 'w.qcow2.raw'), 'r+');
    try {
      fs.writeSync(fd, Buffer.alloc(4096, 0x61), 0, 4096, 0);
      const io = qemuIo('w.qcow2', 'write 0 4k');
      expect(io.status).not.toBe(0);
      expect(io.stderr).toMatch(/Failed to get "write" lock/);
      const info = qemuImg('info', 'w.qcow2');
      expect(info.status).not.toBe(0);
      expect(info.stderr).toMatch(/Failed to get shared "write" lock/);
      expect(qemuImg('info', '-U', 'w.qcow2').status).toBe(0);

      const ours = cli('info', 'w.qcow2');
      expect(ours.status).toBe(1);
      expect(ours.stderr.trim().split('\n')).toHaveLength(1);
      expect(ours.stderr).toMatch(/Failed to get shared "write" lock.*Is another process using the image\?.*-U/);
      expect(cli('info', '-U', 'w.qcow2').stdout).toMatch(/file format: qcow2/);
      expect(cli('map', '--force-share', 'w.qcow2').status).toBe(0);
      expect(cli('check', 'w.qcow2').stderr).toMatch(/Failed to get shared "write" lock/);
      const repair = cli('check', '-r', 'all', 'w.qcow2');
      expect(repair.status).toBe(1);
      expect(repair.stderr).toMatch(/Failed to get "write" lock/);
    } finally {
      fs.closeSync(fd);
    }
    // The last handle closed the image and dropped the locks: QEMU may write, the CLI may read.
    await waitForNoWriter(path.join(images, 'w.qcow2'));
    expect(qemuIo('w.qcow2', 'write 4k 4k').status).toBe(0);
    expect(cli('check', 'w.qcow2').stdout).toMatch(/No errors/);
    expect(qemuIo('w.qcow2', 'read -P 0x61 0 4k').status).toBe(0);
  });

  it('vdiskfs check -r refuses an image qemu-storage-daemon is writing and leaves it untouched; check -U reads it', async () => {
    qemuImg('create', '-q', '-f', 'qcow2', 'busy.qcow2', '16M');
    const before = fs.readFileSync(path.join(images, 'busy.qcow2'));
    await qemuWriting(path.join(images, 'busy.qcow2'));
    const r = cli('check', '-r', 'all', 'busy.qcow2');
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^vdiskfs: .*busy\.qcow2: Failed to get "write" lock\. Is another process using the image\?\n$/);
    expect(fs.readFileSync(path.join(images, 'busy.qcow2')).equals(before)).toBe(true);
    expect(cli('check', 'busy.qcow2').stderr).toMatch(/-U reads it anyway/);
    expect(cli('check', '-U', 'busy.qcow2').status).toBe(0);
  });
});

describe('two mounts of one folder', () => {
  it("exclude each other's writers: the second is read-only (0444) while the first writes, writable once it closed", async () => {
    qemuImg('create', '-q', '-f', 'qcow2', 'shared.qcow2', '16M');
    qemuImg('create', '-q', '-f', 'vmdk', '-o', 'subformat=twoGbMaxExtentSparse', 'split.vmdk', '16M');
    const first = await fx.mount();
    const second = await mount(images, path.join(fx.dir, 'mnt2'));
    try {
      for (const name of ['shared.qcow2.raw', 'split.vmdk.raw']) {
        const fd = fs.openSync(path.join(first.mnt, name), 'r+');
        try {
          const other = path.join(second.mnt, name);
          expect(() => fs.openSync(other, 'r+')).toThrow(/EROFS/);
          expect(modeOf(other)).toBe(0o444);
          expect(fs.readFileSync(other).length).toBe(16 << 20); // reading is fine
          expect(modeOf(path.join(first.mnt, name))).toBe(0o644);
        } finally {
          fs.closeSync(fd);
        }
        await waitForNoWriter(path.join(images, name.replace(/\.raw$/, '')));
        fs.closeSync(fs.openSync(path.join(second.mnt, name), 'r+')); // now the second may write
      }
    } finally {
      await second.cleanup();
    }
  });
});

describe("someone else's hung FUSE server", () => {
  it('a stopped qemu-storage-daemon export holding a file elsewhere does not stall a writable open of a view', async () => {
    qemuImg('create', '-q', '-f', 'qcow2', 'mine.qcow2', '16M');
    const other = path.join(fx.dir, 'elsewhere');
    fs.mkdirSync(other);
    const backend = path.join(other, 'backend.raw');
    fs.writeFileSync(backend, Buffer.alloc(1 << 20));
    const exported = path.join(other, 'exported.raw');
    fs.writeFileSync(exported, '');
    const qsd = track(
      spawn(
        'qemu-storage-daemon',
        [
          '--blockdev',
          `driver=file,node-name=f,filename=${backend}`,
          '--export',
          `type=fuse,id=e,node-name=f,mountpoint=${exported},writable=on`,
        ],
        { stdio: 'ignore' },
      ),
    );
    exportMounts.push(exported);
    for (let i = 0; i < 400 && !isMounted(exported); i++) await new Promise((r) => setTimeout(r, 25));
    expect(isMounted(exported)).toBe(true);
    // A process holding the export open for writing, then the server stops answering.
    const holder = track(spawn('sh', ['-c', `exec 3<>"${exported}"; exec sleep 600`], { stdio: 'ignore' }));
    const holds = () => {
      try {
        return fs.readlinkSync(`/proc/${holder.pid}/fd/3`) === exported; // readlink never asks the server
      } catch {
        return false;
      }
    };
    for (let i = 0; i < 400 && !holds(); i++) await new Promise((r) => setTimeout(r, 25));
    expect(holds()).toBe(true);
    qsd.kill('SIGSTOP');

    const m = await fx.mount();
    // Asynchronous, so a regression fails by the test's timeout instead of hanging the runner.
    const fh = await fs.promises.open(path.join(m.mnt, 'mine.qcow2.raw'), 'r+');
    await fh.write(Buffer.from('still served'), 0, 12, 0);
    await fh.close();
    expect(fs.readFileSync(path.join(m.mnt, 'mine.qcow2.raw')).subarray(0, 12).toString()).toBe('still served');
  }, 60_000);
});
