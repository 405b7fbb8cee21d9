import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import Module from 'node:module';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import * as sys from '../../src/io/syscalls';
import { VdiskError } from '../../src/io/errors';

let dir: string;
const fds: number[] = [];
const open = (p: string, flags: string | number = 'r+') => {
  const fd = fs.openSync(p, flags);
  fds.push(fd);
  return fd;
};
const track = (fd: number) => (fds.push(fd), fd);

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-sys-'));
});
afterEach(() => {
  for (const fd of fds.splice(0)) fs.closeSync(fd);
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('OFD locks', () => {
  it('conflict between two open file descriptions of one file, in one process', () => {
    const p = path.join(dir, 'img');
    fs.writeFileSync(p, Buffer.alloc(4096));
    const a = open(p);
    const b = open(p);
    expect(sys.ofdLock(a, 101, 1, 'read')).toBe(true);
    expect(sys.ofdLock(b, 101, 1, 'read')).toBe(true); // readers share
    expect(sys.ofdLock(b, 101, 1, 'write')).toBe(false); // a's read lock conflicts
    expect(sys.ofdTestLock(b, 101, 1, 'write')).toEqual({ type: 'read', pid: -1 });
    expect(sys.ofdTestLock(a, 101, 1, 'write')).toEqual({ type: 'read', pid: -1 }); // b's read lock now
    expect(sys.ofdLock(b, 101, 1, 'unlock')).toBe(true);
    expect(sys.ofdTestLock(a, 101, 1, 'write')).toBeUndefined(); // own locks never conflict
    expect(sys.ofdTestLock(b, 100, 1, 'write')).toBeUndefined(); // other bytes are free
    expect(sys.ofdLock(a, 101, 1, 'unlock')).toBe(true);
    expect(sys.ofdLock(b, 101, 1, 'write')).toBe(true);
  });

  it('are released when the last fd of the description closes', () => {
    const p = path.join(dir, 'img');
    fs.writeFileSync(p, '');
    const a = fs.openSync(p, 'r+');
    const b = open(p);
    expect(sys.ofdLock(a, 0, 0, 'write')).toBe(true);
    expect(sys.ofdLock(b, 5, 1, 'read')).toBe(false);
    fs.closeSync(a);
    expect(sys.ofdLock(b, 5, 1, 'read')).toBe(true);
  });

  it('throws a SyscallError carrying the errno name', () => {
    expect(() => sys.ofdLock(-1, 0, 1, 'read')).toThrow(expect.objectContaining({ errno: 'EBADF', syscall: 'fcntl', code: 'EIO' }));
    try {
      sys.ofdTestLock(123456, 0, 1, 'read');
    } catch (e) {
      expect(e).toBeInstanceOf(VdiskError);
      expect((e as Error).message).toMatch(/^fcntl F_OFD_GETLK fd 123456 .*: EBADF \(Bad file descriptor\)$/);
      return;
    }
    expect.unreachable();
  });
});

describe('fallocate', () => {
  it('punches a hole that stat.blocks shows, keeping the size', () => {
    const p = path.join(dir, 'f');
    fs.writeFileSync(p, Buffer.alloc(1 << 20, 0xaa));
    const fd = open(p);
    fs.fsyncSync(fd);
    const before = fs.fstatSync(fd).blocks;
    sys.fallocate(fd, sys.FALLOC_FL_PUNCH_HOLE | sys.FALLOC_FL_KEEP_SIZE, 0, 512 * 1024);
    const st = fs.fstatSync(fd);
    expect(st.size).toBe(1 << 20);
    expect(before - st.blocks).toBe(1024); // 512 KiB in 512-byte blocks
    const head = Buffer.alloc(16, 1);
    fs.readSync(fd, head, 0, 16, 0);
    expect(head.equals(Buffer.alloc(16))).toBe(true);
  });

  it('allocates, and reports EINVAL/EBADF by name', () => {
    const p = path.join(dir, 'g');
    const fd = open(p, 'w+');
    sys.fallocate(fd, 0, 0, 65536);
    expect(fs.fstatSync(fd).size).toBe(65536);
    expect(() => sys.fallocate(fd, 0, 0, 0)).toThrow(expect.objectContaining({ errno: 'EINVAL', code: 'EINVAL' }));
    expect(() => sys.fallocate(-1, 0, 0, 1)).toThrow(expect.objectContaining({ errno: 'EBADF' }));
  });
});

/** Drops a file's clean pages from the page cache (dd's iflag=nocache is posix_fadvise DONTNEED). */
function dropCache(p: string): void {
  execFileSync('dd', [`if=${p}`, 'iflag=nocache', 'count=0', 'status=none']);
}

describe('preadCached (preadv2 RWF_NOWAIT)', () => {
  it('reads what the page cache holds, 0 at the end, and -1 for bytes only the disk has', () => {
    const p = path.join(dir, 'c');
    const data = Buffer.alloc(1 << 20);
    for (let i = 0; i < data.length; i += 4096) data.writeUInt32LE(i, i);
    fs.writeFileSync(p, data);
    const fd = open(p);
    fs.fsyncSync(fd); // clean pages, which DONTNEED can drop
    const buf = Buffer.alloc(1 << 20);
    expect(sys.preadCached(fd, buf, 0)).toBe(1 << 20);
    expect(buf.equals(data)).toBe(true);
    expect(sys.preadCached(fd, buf.subarray(0, 4096), 1 << 20)).toBe(0);
    dropCache(p);
    expect(sys.preadCached(fd, buf, 0)).toBe(-1);
    expect(() => sys.preadCached(-1, buf, 0)).toThrow(expect.objectContaining({ errno: 'EBADF' }));
  });
});

describe('pread/pwrite and write without libuv (the synchronous host I/O and the /dev/fuse reply)', () => {
  it('read and write all of a buffer, short only at the end of the file; errors name the file and keep the errno', () => {
    const p = path.join(dir, 'img');
    fs.writeFileSync(p, Buffer.alloc(8192, 1));
    const fd = open(p);
    sys.pwriteFully(fd, Buffer.alloc(4096, 7), 2048, p);
    const back = Buffer.alloc(8192);
    expect(sys.preadFully(fd, back, 0, p)).toBe(8192);
    expect(back.subarray(2048, 6144).every((b) => b === 7)).toBe(true);
    expect(back[2047]).toBe(1);
    expect(back[6144]).toBe(1);
    expect(sys.preadFully(fd, Buffer.alloc(4096), 6144, p)).toBe(2048); // the end of the file
    expect(sys.preadSome(fd, Buffer.alloc(16), 1 << 20, p)).toBe(0);
    // A full device: ENOSPC, as the merger's and the drivers' callers expect it.
    const full = open('/dev/full', 'w');
    expect(() => sys.pwriteSome(full, Buffer.alloc(512), 0, '/dev/full')).toThrow(
      expect.objectContaining({ code: 'ENOSPC', message: expect.stringMatching(/pwrite \/dev\/full at 0: ENOSPC/) }),
    );
    // A folder: EISDIR, reported as an I/O error with the name.
    const d = open(dir, 'r');
    expect(() => sys.preadFully(d, Buffer.alloc(16), 0, dir)).toThrow(VdiskError);
    expect(() => sys.preadFully(d, Buffer.alloc(16), 0, dir)).toThrow(/pread .* at 0: EISDIR/);
  });

  it('writeOrErrno returns -errno instead of throwing', () => {
    const p = path.join(dir, 'f');
    fs.writeFileSync(p, '');
    expect(sys.writeOrErrno(open(p, 'r+'), Buffer.from('hello'), 5)).toBe(5);
    expect(fs.readFileSync(p, 'utf8')).toBe('hello');
    expect(sys.writeOrErrno(open(p, 'r'), Buffer.from('x'), 1)).toBe(-9); // EBADF: not open for writing
    expect(sys.writeOrErrno(open('/dev/full', 'w'), Buffer.from('x'), 1)).toBe(-28); // ENOSPC
  });
});

describe('eventfd and poll', () => {
  it('poll sees an eventfd become readable; the counter reads and resets', () => {
    const efd = track(sys.eventfd(0, sys.EFD_NONBLOCK | sys.EFD_CLOEXEC));
    expect(sys.poll([{ fd: efd, events: sys.POLLIN }], 0)).toEqual([0]);
    expect(sys.eventfdRead(efd)).toBe(0);
    sys.eventfdWrite(efd, 3);
    sys.eventfdWrite(efd, 4);
    expect(sys.poll([{ fd: efd, events: sys.POLLIN | sys.POLLOUT }], 0)).toEqual([sys.POLLIN | sys.POLLOUT]);
    expect(sys.eventfdRead(efd)).toBe(7);
    expect(sys.poll([{ fd: efd, events: sys.POLLIN }], 0)).toEqual([0]);
  });

  it('pollAsync waits on another thread while the event loop runs', async () => {
    const efd = track(sys.eventfd(0, sys.EFD_CLOEXEC));
    const waiting = sys.pollAsync([{ fd: efd, events: sys.POLLIN }], -1);
    let loopRan = false;
    await new Promise<void>((r) =>
      setImmediate(() => {
        loopRan = true;
        r();
      }),
    );
    expect(loopRan).toBe(true);
    sys.eventfdWrite(efd, 1);
    expect(await waiting).toEqual([sys.POLLIN]);
    expect(sys.eventfdRead(efd)).toBe(1);
  });

  it('reports a closed fd as POLLNVAL', async () => {
    const efd = sys.eventfd(0, 0);
    fs.closeSync(efd);
    expect(sys.poll([{ fd: efd, events: sys.POLLIN }], 0)).toEqual([sys.POLLNVAL]);
    expect(await sys.pollAsync([{ fd: efd, events: sys.POLLIN }], 0)).toEqual([sys.POLLNVAL]);
  });
});

describe('SCM_RIGHTS', () => {
  it('passes an fd over a socketpair; the received one is the same open file', () => {
    const [a, b] = sys.socketpair();
    track(a);
    track(b);
    const p = path.join(dir, 'shared');
    fs.writeFileSync(p, 'hello');
    const fd = open(p, 'r');
    sys.sendFd(a, fd);
    const got = track(sys.recvFd(b));
    expect(got).not.toBe(fd);
    expect(fs.fstatSync(got).ino).toBe(fs.fstatSync(fd).ino);
    const buf = Buffer.alloc(5);
    fs.readSync(got, buf, 0, 5, 0);
    expect(buf.toString()).toBe('hello');
    expect(sys.fcntlGetFlags(got) & 3 /* O_ACCMODE */).toBe(fs.constants.O_RDONLY);
  });

  it('recvFd fails with one line when the peer closes without sending', () => {
    const [a, b] = sys.socketpair();
    track(b);
    fs.closeSync(a);
    expect(() => sys.recvFd(b)).toThrow(/closed before a file descriptor came/);
  });

  it('fcntl flags toggle O_NONBLOCK', () => {
    const [a, b] = sys.socketpair();
    track(a);
    track(b);
    const flags = sys.fcntlGetFlags(a);
    expect(flags & fs.constants.O_NONBLOCK).toBe(0);
    sys.fcntlSetFlags(a, flags | fs.constants.O_NONBLOCK);
    expect(sys.fcntlGetFlags(a) & fs.constants.O_NONBLOCK).toBe(fs.constants.O_NONBLOCK);
    expect(() => fs.readSync(a, Buffer.alloc(1))).toThrow(expect.objectContaining({ code: 'EAGAIN' }));
  });
});

describe('mount', () => {
  it('mounts and detaches a tmpfs (tests run as root)', () => {
    expect(sys.geteuid()).toBe(0);
    const target = path.join(dir, 'mnt');
    fs.mkdirSync(target);
    sys.mount('vdiskfs-test', target, 'tmpfs', sys.MS_NOSUID | sys.MS_NODEV, 'size=1m,mode=0700');
    try {
      expect(fs.readFileSync('/proc/self/mountinfo', 'utf8')).toContain(` ${target} `);
      fs.writeFileSync(path.join(target, 'x'), 'y');
      expect(() => fs.rmdirSync(target)).toThrow(); // busy: a mountpoint
    } finally {
      sys.umount2(target, sys.MNT_DETACH);
    }
    expect(fs.readFileSync('/proc/self/mountinfo', 'utf8')).not.toContain(` ${target} `);
    expect(fs.readdirSync(target)).toEqual([]);
  });

  it('names the errno of a failed mount and umount2', () => {
    const target = path.join(dir, 'nope');
    expect(() => sys.mount('x', target, 'tmpfs', 0, null)).toThrow(expect.objectContaining({ errno: 'ENOENT', code: 'ENOENT' }));
    expect(() => sys.umount2(dir, 0)).toThrow(expect.objectContaining({ errno: 'EINVAL' })); // not a mountpoint
    expect(sys.getuid()).toBe(process.getuid!());
  });
});

describe('loading', () => {
  it('a missing koffi binary is one clear line, at first use, not at import', async () => {
    vi.resetModules();
    const loader = Module as unknown as { _load(request: string, ...rest: unknown[]): unknown };
    const load = loader._load;
    loader._load = function (request: string, ...rest: unknown[]) {
      if (request === 'koffi') throw new Error("Cannot find module 'koffi'\nRequire stack: ...");
      return load.call(this, request, ...rest);
    };
    try {
      const fresh = await import('../../src/io/syscalls');
      expect(() => fresh.getuid()).toThrow(
        /^the koffi native module could not be loaded \(Cannot find module 'koffi'\); reinstall with npm ci$/,
      );
    } finally {
      loader._load = load;
    }
  });
});

describe('seekDataOrHole', () => {
  it('finds data and holes of a sparse file as the file system keeps them; no data past the last is undefined', () => {
    const f = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-seek-')), 'sparse');
    fs.writeFileSync(f, '');
    fs.truncateSync(f, 4 << 20);
    const fd = fs.openSync(f, 'r+');
    try {
      fs.writeSync(fd, Buffer.alloc(64 << 10, 1), 0, 64 << 10, 1 << 20);
      fs.fsyncSync(fd);
      expect(sys.seekDataOrHole(fd, 0, 'data')).toBe(1 << 20);
      expect(sys.seekDataOrHole(fd, 1 << 20, 'hole')).toBe((1 << 20) + (64 << 10));
      expect(sys.seekDataOrHole(fd, 0, 'hole')).toBe(0);
      expect(sys.seekDataOrHole(fd, 2 << 20, 'data')).toBeUndefined();
      expect(sys.seekDataOrHole(fd, 4 << 20, 'hole')).toBeUndefined(); // at EOF: ENXIO too
    } finally {
      fs.closeSync(fd);
      fs.rmSync(path.dirname(f), { recursive: true, force: true });
    }
  });
});
