/**
 * Starting and stopping: background mode, SIGTERM, SIGINT and an outside `umount` all end in a
 * clean shutdown (pending writes drained, images closed, exit 0); user mistakes are one line.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { beforeEach, describe, expect, it } from 'vitest';
import { CLI, TEST_TRANSPORT, isMounted, mountFixture, type Mounted } from '../helpers/mount';

const fx = mountFixture();
let images: string;
let mnt: string;

beforeEach(() => {
  ({ images, mnt } = fx);
  fs.writeFileSync(path.join(images, 'd.img'), '');
  fs.truncateSync(path.join(images, 'd.img'), 8 << 20);
});

function cli(args: string[]) {
  return spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 60_000 });
}

/**
 * Writes without fsync (so the data may still be pending in the merger), then stops the mount.
 * Kernel transport: the stop flushes, detaches, and keeps serving the open file until it is
 * closed, then exits 0. fuse-native: the mount goes at once (the open file gets an error).
 */
async function writeThenStop(stop: (m: Mounted) => void): Promise<void> {
  const m = await fx.mount(['--include-raw', '--merge-delay', '60000']);
  const data = randomBytes(3 * 4096 + 100);
  const fd = fs.openSync(`${mnt}/d.img.raw`, 'r+');
  fs.writeSync(fd, data, 0, data.length, 5000);
  // No close and no fsync: the merger holds it (delay 60 s), only shutdown can write it.
  stop(m);
  const onDisk = () => fs.readFileSync(path.join(images, 'd.img')).subarray(5000, 5000 + data.length);
  if (TEST_TRANSPORT !== 'fuse-native') {
    for (let i = 0; i < 200 && (isMounted(mnt) || !onDisk().equals(data)); i++) await new Promise((r) => setTimeout(r, 25));
    expect(isMounted(mnt)).toBe(false); // detached at once...
    expect(onDisk().equals(data)).toBe(true); // ...after every image was flushed
    expect(m.proc.exitCode).toBe(null); // ...and still serving the open file
    const back = Buffer.alloc(data.length);
    fs.readSync(fd, back, 0, back.length, 5000);
    expect(back.equals(data)).toBe(true);
    fs.closeSync(fd);
  }
  const code = await Promise.race([m.exited, new Promise((r) => setTimeout(() => r('timeout'), 15_000))]);
  expect(code).toBe(0);
  expect(isMounted(mnt)).toBe(false);
  if (TEST_TRANSPORT === 'fuse-native')
    try {
      fs.closeSync(fd);
    } catch {
      /* the mount is gone: EBADF/ENOTCONN is expected */
    }
  expect(onDisk().equals(data)).toBe(true);
}

describe('clean shutdown', () => {
  it('on SIGTERM: pending writes reach the image, exit 0', async () => {
    await writeThenStop((m) => m.proc.kill('SIGTERM'));
  });

  it('on SIGINT (Ctrl-C in the foreground)', async () => {
    await writeThenStop((m) => m.proc.kill('SIGINT'));
  });

  it('on an outside umount (lazy, with a file still open)', async () => {
    await writeThenStop(() => execFileSync('umount', ['-l', mnt]));
  });

  it('on `vdiskfs unmount` of a background mount, which returns only once the images are closed', async () => {
    const r = cli(['mount', '--include-raw', images, mnt]);
    expect(r.status, r.stderr).toBe(0);
    expect(isMounted(mnt)).toBe(true);
    const data = randomBytes(8192);
    fs.writeFileSync(`${mnt}/d.img.raw`, data, { flag: 'r+' });
    const u = cli(['unmount', mnt]);
    expect(u.status, u.stderr).toBe(0);
    expect(isMounted(mnt)).toBe(false);
    expect(fs.readFileSync(path.join(images, 'd.img')).subarray(0, 8192).equals(data)).toBe(true);
    expect(spawnSync('pgrep', ['-f', `daemon-child.*${mnt}|${mnt}.*daemon-child`]).status).not.toBe(0);
  });
});

describe('user mistakes are one clear line and a non-zero exit', () => {
  const oneLine = (r: ReturnType<typeof cli>) => {
    expect(r.status).not.toBe(0);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^vdiskfs: /);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  };

  it('mountpoint missing', () => {
    const r = cli(['mount', images, path.join(fx.dir, 'nope')]);
    oneLine(r);
    expect(r.stderr).toMatch(/mountpoint .*nope does not exist/);
  });

  it('mountpoint not a folder', () => {
    const r = cli(['mount', images, path.join(images, 'd.img')]);
    oneLine(r);
    expect(r.stderr).toMatch(/is not a folder/);
  });

  it('images folder missing', () => {
    const r = cli(['mount', path.join(fx.dir, 'none'), mnt]);
    oneLine(r);
    expect(r.stderr).toMatch(/images folder .* does not exist/);
  });

  it('already mounted', async () => {
    await fx.mount(['--include-raw']);
    const r = cli(['mount', images, mnt]);
    oneLine(r);
    expect(r.stderr).toMatch(/already mounted/);
  });

  it('no /dev/fuse, or (fuse-native transport) no libfuse.so.2: a clear line (simulated in a private mount namespace)', () => {
    // Hide /dev/fuse and libfuse in a private mount namespace so the real machine is untouched.
    const lib = execFileSync('sh', ['-c', 'ldconfig -p | grep -o "/.*libfuse.so.2$" | head -1'], { encoding: 'utf8' }).trim();
    const noFuse = spawnSync(
      'unshare',
      [
        '-m',
        'sh',
        '-c',
        `mount --bind /dev/null /dev/fuse 2>/dev/null; rm -f /dev/fuse 2>/dev/null || mount -t tmpfs none /dev 2>/dev/null; exec "${process.execPath}" "${CLI}" mount "${images}" "${mnt}"`,
      ],
      { encoding: 'utf8' },
    );
    expect(noFuse.status).not.toBe(0);
    expect(noFuse.stderr).toMatch(/^vdiskfs: .*(\/dev\/fuse|cannot mount)/);
    expect(noFuse.stderr).not.toMatch(/\n\s+at /);
    if (lib) {
      const real = fs.realpathSync(lib);
      const noLib = spawnSync(
        'unshare',
        [
          '-m',
          'sh',
          '-c',
          `mount --bind /dev/null "${real}" && exec "${process.execPath}" "${CLI}" mount -f --transport fuse-native "${images}" "${mnt}"`,
        ],
        { encoding: 'utf8' },
      );
      expect(noLib.status).not.toBe(0);
      expect(noLib.stderr.trim().split('\n')).toHaveLength(1);
      expect(noLib.stderr).toMatch(/libfuse/);
    }
  });

  it('unknown command and missing arguments', () => {
    oneLine(cli(['frobnicate']));
    const r = cli(['mount']);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/^vdiskfs: Not enough non-option arguments/);
  });

  it('--help shows an example for every command', () => {
    for (const c of ['mount', 'unmount', 'create', 'info', 'check', 'map', 'bench']) {
      const r = cli([c, '--help']);
      expect(r.status, c).toBe(0);
      expect(r.stdout, c).toMatch(/Examples:/);
    }
  });
});
