/**
 * The kernel-protocol transport through a real mount: FALLOCATE and LSEEK reach the operations
 * core, 1 MiB requests arrive, a stop keeps serving a loop device until it is detached, a dead
 * mount is cleared, and each mistake in mounting is one line that leaves nothing mounted.
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { beforeEach, describe, expect, it } from 'vitest';
import { CLI, isMounted, mountFixture } from '../helpers/mount';

const fx = mountFixture();
let view: string;

beforeEach(() => {
  fs.writeFileSync(path.join(fx.images, 'd.img'), '');
  fs.truncateSync(path.join(fx.images, 'd.img'), 16 << 20);
  view = path.join(fx.mnt, 'd.img.raw');
});

const cli = (args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 60_000 });
const py = (code: string) => spawnSync('python3', ['-c', code], { encoding: 'utf8' });

/** The request counters --stats prints at unmount, e.g. `write request sizes: 4K:3 1M:8`. */
function statsLine(stderr: string, name: string): string {
  return new RegExp(`${name}: (.*)`).exec(stderr)?.[1] ?? '';
}

describe('requests the kernel transport receives', () => {
  it('FALLOCATE and LSEEK reach the operations core; SEEK_DATA past the end is ENXIO', async () => {
    const m = await fx.mount(['--include-raw', '--stats']);
    // What the core answers (EOPNOTSUPP until "views behave like disks" fills them in) is not
    // this test's business: only that the requests arrive and get an answer.
    spawnSync('fallocate', ['-n', '-o', '0', '-l', '4096', view], { encoding: 'utf8' });
    spawnSync('fallocate', ['-p', '-o', '0', '-l', '4096', view], { encoding: 'utf8' });
    const seek = py(
      `import os,errno\nfd=os.open(${JSON.stringify(view)}, os.O_RDONLY)\nfor off in (0, ${16 << 20}):\n  try: os.lseek(fd, off, os.SEEK_DATA); print('ok')\n  except OSError as e: print('EOPNOTSUPP' if e.errno == errno.EOPNOTSUPP else errno.errorcode[e.errno])`,
    );
    const [first, pastEnd] = seek.stdout.trim().split('\n');
    expect(['ok', 'EOPNOTSUPP']).toContain(first);
    expect(pastEnd).toBe('ENXIO');
    expect(await m.unmount()).toBe(0);
    const requests = statsLine(m.stderr(), 'requests');
    expect(requests).toMatch(/FALLOCATE:2/);
    expect(requests).toMatch(/LSEEK:2/);
  });

  it('gets 1 MiB reads and writes (MAX_PAGES negotiated), counted by size', async () => {
    const m = await fx.mount(['--include-raw', '--stats']);
    const data = randomBytes(8 << 20);
    fs.writeFileSync(path.join(fx.dir, 'src'), data);
    execFileSync('dd', [`if=${path.join(fx.dir, 'src')}`, `of=${view}`, 'bs=1M', 'oflag=direct', 'conv=notrunc', 'status=none']);
    execFileSync('dd', [`if=${view}`, `of=${path.join(fx.dir, 'back')}`, 'bs=1M', 'count=8', 'iflag=direct', 'status=none']);
    expect(fs.readFileSync(path.join(fx.dir, 'back')).equals(data)).toBe(true);
    expect(await m.unmount()).toBe(0);
    expect(statsLine(m.stderr(), 'max_write')).toBe('1048576');
    expect(statsLine(m.stderr(), 'write request sizes')).toMatch(/(^| )1M:8( |$)/);
    expect(statsLine(m.stderr(), 'read request sizes')).toMatch(/(^| )1M:8( |$)/);
    expect(statsLine(m.stderr(), 'flags')).toMatch(/ASYNC_DIO/);
  });

  it('writable handles bypass the page cache (DIRECT_IO_ALLOW_MMAP); read-only ones keep readahead', async () => {
    const m = await fx.mount(['--include-raw', '--stats']);
    fs.writeFileSync(path.join(fx.dir, 'src'), randomBytes(1 << 20));
    // 4 KiB buffered reads: through a writable handle each is a 4K READ; a read-only handle's
    // readahead asks for more at once. Then a shared writable mapping, which FOPEN_DIRECT_IO
    // allows only with DIRECT_IO_ALLOW_MMAP: its store must reach the image.
    const r = py(
      [
        'import mmap, os',
        `v = ${JSON.stringify(view)}`,
        'rw = os.open(v, os.O_RDWR)',
        'for i in range(64): os.pread(rw, 4096, (4 << 20) + i * 4096)',
        'ro = os.open(v, os.O_RDONLY)',
        'for i in range(64): os.pread(ro, 4096, (8 << 20) + i * 4096)',
        'm = mmap.mmap(rw, 1 << 20, mmap.MAP_SHARED)',
        "m[8192:8197] = b'mmap!'",
        'm.flush(); m.close(); os.close(rw)',
        'print(os.pread(ro, 5, 8192))',
      ].join('\n'),
    );
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout.trim()).toBe("b'mmap!'");
    expect(await m.unmount()).toBe(0);
    const kernelMinor = Number(/kernel protocol: 7\.(\d+)/.exec(m.stderr())?.[1]);
    const flags = statsLine(m.stderr(), 'flags');
    const reads = statsLine(m.stderr(), 'read request sizes');
    const fourK = Number(/(?:^| )4K:(\d+)/.exec(reads)?.[1] ?? 0);
    if (kernelMinor >= 39) {
      // Every 7.39 kernel (Linux 6.6+, this machine's too) offers it: writers go uncached.
      expect(flags).toMatch(/DIRECT_IO_ALLOW_MMAP/);
      expect(fourK).toBeGreaterThanOrEqual(64);
    } else {
      expect(flags).not.toMatch(/DIRECT_IO_ALLOW_MMAP/);
    }
    // Whatever the kernel, the read-only handle's 64 reads came as fewer, larger requests.
    expect(reads).toMatch(/(^| )(128K|256K|512K|1M):\d+/);
    expect(fs.readFileSync(path.join(fx.images, 'd.img')).subarray(8192, 8197).toString()).toBe('mmap!');
  });
});

describe('the request loop keeps the event loop alive', () => {
  it('pending merged writes reach the image after --merge-delay with no further request', async () => {
    await fx.mount(['--include-raw', '--merge-delay', '20']);
    const data = randomBytes(8192);
    const fd = fs.openSync(view, 'r+');
    try {
      fs.writeSync(fd, data, 0, data.length, 1 << 20);
      // No fsync, no close, no other request: only the merger's timer can write it out.
      const onDisk = () => fs.readFileSync(path.join(fx.images, 'd.img')).subarray(1 << 20, (1 << 20) + data.length);
      for (let i = 0; i < 200 && !onDisk().equals(data); i++) await new Promise((r) => setTimeout(r, 25));
      expect(onDisk().equals(data)).toBe(true);
    } finally {
      fs.closeSync(fd);
    }
  });
});

describe('waiting for requests: busy-poll, then sleep', () => {
  it('a psync client is caught by the poll (--stats counts it); --poll-max-us 0 never polls and serves the same bytes', async () => {
    const data = randomBytes(2 << 20);
    fs.writeFileSync(path.join(fx.dir, 'src'), data);
    for (const poll of ['5000', '0']) {
      const m = await fx.mount(['--include-raw', '--stats', '--poll-max-us', poll]);
      // 512 synchronous 4 KiB writes, then read back: one request in flight at a time.
      execFileSync('dd', [`if=${path.join(fx.dir, 'src')}`, `of=${view}`, 'bs=4k', 'conv=notrunc,fsync', 'status=none']);
      execFileSync('dd', [`if=${view}`, `of=${path.join(fx.dir, 'back')}`, 'bs=4k', 'count=512', 'status=none']);
      expect(fs.readFileSync(path.join(fx.dir, 'back')).equals(data)).toBe(true);
      expect(await m.unmount()).toBe(0);
      const caught = Number(/spinsCaught=(\d+)/.exec(m.stderr())?.[1]);
      // 5 ms is generous (the default is 300 µs): dd's next request comes long before, even on a loaded machine.
      if (poll === '0') expect(caught).toBe(0);
      else expect(caught).toBeGreaterThan(0);
    }
  });
});

describe('stopping', () => {
  it('SIGTERM: detaches, keeps serving a loop device until it is detached, then exits 0', async () => {
    const m = await fx.mount(['--include-raw']);
    const loop = execFileSync('losetup', ['--show', '-f', view], { encoding: 'utf8' }).trim();
    m.loops.push(loop);
    const data = randomBytes(64 << 10);
    fs.writeFileSync(path.join(fx.dir, 'src'), data);
    m.proc.kill('SIGTERM');
    for (let i = 0; i < 200 && isMounted(fx.mnt); i++) await new Promise((r) => setTimeout(r, 25));
    expect(isMounted(fx.mnt)).toBe(false);
    // The loop device still reads and writes the view through the detached mount.
    execFileSync('dd', [`if=${path.join(fx.dir, 'src')}`, `of=${loop}`, 'bs=64k', 'seek=3', 'oflag=direct', 'status=none']);
    expect(m.proc.exitCode).toBe(null);
    execFileSync('losetup', ['-d', loop]);
    m.loops.length = 0;
    const code = await Promise.race([m.exited, new Promise((r) => setTimeout(() => r('timeout'), 20_000))]);
    expect(code).toBe(0);
    expect(
      fs
        .readFileSync(path.join(fx.images, 'd.img'))
        .subarray(3 * 65536, 4 * 65536)
        .equals(data),
    ).toBe(true);
  });

  it('a dead mount left by a killed daemon is cleared by the next mount, with a line saying so', async () => {
    const first = await fx.mount(['--include-raw']);
    first.proc.kill('SIGKILL');
    await first.exited;
    expect(isMounted(fx.mnt)).toBe(true);
    expect(() => fs.statSync(fx.mnt)).toThrow(/ENOTCONN|ECONNABORTED/); // ECONNABORTED: served through FUSE over io_uring
    // The helper sees the dead mount in mountinfo at once: wait for the new one to serve.
    const second = await fx.mount(['--include-raw']);
    expect(await second.waitForLog(/cleared a dead/)).toMatch(/cleared a dead vdiskfs mount on .*mnt/);
    const listing = () => {
      try {
        return fs.readdirSync(fx.mnt);
      } catch {
        return [];
      }
    };
    for (let i = 0; i < 200 && listing().length === 0; i++) await new Promise((r) => setTimeout(r, 25));
    expect(listing()).toEqual(['d.img.raw']);
    expect(await second.unmount()).toBe(0);
    expect(isMounted(fx.mnt)).toBe(false);
  });

  it('Ctrl-C at any moment of start-up leaves nothing mounted', async () => {
    for (const delayMs of [0, 30, 100, 250, 600]) {
      const p = spawn(process.execPath, [CLI, 'mount', '-f', '--include-raw', fx.images, fx.mnt], { stdio: 'ignore' });
      const exited = new Promise<number | null>((res) => p.once('exit', (c) => res(c)));
      await new Promise((r) => setTimeout(r, delayMs));
      p.kill('SIGINT');
      const code = await Promise.race([exited, new Promise((r) => setTimeout(() => r('timeout'), 20_000))]);
      expect(code, `SIGINT after ${delayMs} ms`).not.toBe('timeout');
      expect(isMounted(fx.mnt), `SIGINT after ${delayMs} ms`).toBe(false);
    }
  });
});

describe('stopping, background mounts', () => {
  it('Ctrl-C while a background mount starts leaves nothing mounted and no daemon', async () => {
    for (const delayMs of [50, 200, 500]) {
      const p = spawn(process.execPath, [CLI, 'mount', '--include-raw', '--log-file', path.join(fx.dir, 'log'), fx.images, fx.mnt], {
        stdio: 'ignore',
      });
      const exited = new Promise<number | null>((res) => p.once('exit', (c) => res(c)));
      await new Promise((r) => setTimeout(r, delayMs));
      p.kill('SIGINT');
      const code = await Promise.race([exited, new Promise((r) => setTimeout(() => r('timeout'), 20_000))]);
      expect(code, `SIGINT after ${delayMs} ms`).not.toBe('timeout');
      if (code === 0) {
        // The command had finished (mounted and reported) before the signal came: the mount is its result.
        expect(isMounted(fx.mnt), `exit 0 after SIGINT at ${delayMs} ms`).toBe(true);
        expect(cli(['unmount', fx.mnt]).status).toBe(0);
        continue;
      }
      // Interrupted (130, or killed before its handlers existed): a daemon that had mounted
      // already is taken down by the forwarded signal, asynchronously.
      for (let i = 0; i < 200 && isMounted(fx.mnt); i++) await new Promise((r) => setTimeout(r, 25));
      expect(isMounted(fx.mnt), `SIGINT after ${delayMs} ms (exit ${String(code)})`).toBe(false);
    }
    expect(spawnSync('pgrep', ['-f', `daemon-child.*${fx.mnt}`]).status).not.toBe(0);
  });

  it('`vdiskfs unmount` refuses a busy mount with its hint, and unmounts once the file is closed', async () => {
    const m = await fx.mount(['--include-raw']);
    const fd = fs.openSync(view, 'r');
    try {
      const r = cli(['unmount', fx.mnt]);
      expect(r.status).not.toBe(0);
      expect(r.stderr).toMatch(/busy.*fuser -vm/i);
      expect(isMounted(fx.mnt)).toBe(true);
    } finally {
      fs.closeSync(fd);
    }
    expect(await m.unmount()).toBe(0);
  });
});

describe('mount mistakes are one line and leave nothing mounted', () => {
  const oneLine = (r: ReturnType<typeof cli>, re: RegExp) => {
    expect(r.status).not.toBe(0);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(re);
    expect(isMounted(fx.mnt)).toBe(false);
  };

  it('mountpoint not empty (and -o nonempty mounts over it)', async () => {
    fs.writeFileSync(path.join(fx.mnt, 'stray'), 'x');
    oneLine(cli(['mount', '-f', fx.images, fx.mnt]), /^vdiskfs: mountpoint .* is not empty \(use -o nonempty/);
    oneLine(cli(['mount', fx.images, fx.mnt]), /is not empty/);
    const m = await fx.mount(['--include-raw', '-o', 'nonempty']);
    expect(fs.readdirSync(fx.mnt)).toEqual(['d.img.raw']);
    expect(await m.unmount()).toBe(0);
    expect(fs.readdirSync(fx.mnt)).toEqual(['stray']);
  });

  it('a bad --poll-max-us', () => {
    oneLine(cli(['mount', '-f', '--poll-max-us=-5', fx.images, fx.mnt]), /^vdiskfs: --poll-max-us must be a number ≥ 0, got -5\n?$/);
    oneLine(cli(['mount', '--poll-max-us=soon', fx.images, fx.mnt]), /--poll-max-us must be a number ≥ 0, got NaN/);
  });

  it('an unknown -o option', () => {
    oneLine(
      cli(['mount', '-f', '-o', 'allow_other,frobnicate', fx.images, fx.mnt]),
      /^vdiskfs: unknown mount option -o frobnicate \(known: allow_other/,
    );
    oneLine(cli(['mount', '-o', 'bogus=1', fx.images, fx.mnt]), /unknown mount option -o bogus=1/);
  });
});
