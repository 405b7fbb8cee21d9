import createDebug from 'debug';
import type { Operations, Stat } from 'fuse-native';
import { errno, toErrno } from '../../fs/errno';
import type { FsCore, NodeAttr } from '../../fs/operations-core';
import { settle } from '../../io/errors';

const log = createDebug('vdiskfs:fs');

/** Runs a core call and answers fuse-native with the value or a negative errno; never throws. */
function answer<T>(what: string, fn: () => Promise<T>, cb: (err: number, v?: T) => void): void {
  const p = settle(fn);
  p.then(
    (v) => cb(0, v),
    (e) => {
      const code = toErrno(e);
      if (code === errno('EIO')) log('%s failed: %s', what, (e as Error)?.stack ?? e);
      else log('%s: %s', what, (e as Error)?.message ?? e);
      cb(code);
    },
  );
}

/** read/write callbacks carry the byte count or a negative errno in one number. */
function count(what: string, fn: () => Promise<number>, cb: (n: number) => void): void {
  answer(what, fn, (err, n) => cb(err || (n ?? 0)));
}

function toStat(a: NodeAttr): Stat {
  return {
    mtime: new Date(a.mtimeMs),
    atime: new Date(a.atimeMs),
    ctime: new Date(a.ctimeMs),
    size: a.size,
    blocks: a.blocks,
    blksize: 4096,
    mode: a.mode,
    uid: a.uid,
    gid: a.gid,
    nlink: a.nlink,
  };
}

/**
 * The fuse-native (libfuse 2.9) adapter: path-based callbacks onto the operations core. Kept as
 * the measured baseline transport (`--transport fuse-native`). fuse-native's buffers belong to
 * the kernel request: the core copies writes before its first await and fills reads in place.
 */
export function makeFuseNativeOperations(core: FsCore): Operations {
  return {
    getattr: (path, cb) => answer(`getattr ${path}`, async () => toStat(await core.getattr(path)), cb),
    fgetattr: (path, _fd, cb) => answer(`fgetattr ${path}`, async () => toStat(await core.getattr(path)), cb),
    readdir: (path, cb) =>
      answer(
        `readdir ${path}`,
        async () => (await core.readdir(path)).map((e) => e.name),
        (err, names) => cb(err, names),
      ),
    open: (path, flags, cb) => answer(`open ${path}`, () => core.open(path, flags), cb),
    read: (path, fd, buf, len, pos, cb) => count(`read ${path} ${pos}+${len}`, () => core.read(fd, pos, buf.subarray(0, len)), cb),
    write: (path, fd, buf, len, pos, cb) => count(`write ${path} ${pos}+${len}`, () => core.write(fd, pos, buf.subarray(0, len)), cb),
    flush: (path, fd, cb) => answer(`flush ${path}`, () => core.flush(fd), cb),
    fsync: (path, datasync, fd, cb) => answer(`fsync ${path}`, () => core.fsync(fd, datasync !== 0), cb),
    release: (path, fd, cb) => answer(`release ${path}`, () => core.release(fd), cb),
    truncate: (path, size, cb) => answer(`truncate ${path}`, () => core.truncate(path, size), cb),
    ftruncate: (path, _fd, size, cb) => answer(`ftruncate ${path}`, () => core.truncate(path, size), cb),
    utimens: (_path, _a, _m, cb) => cb(0), // `touch` on a view is harmless; times come from the image file
    statfs: (path, cb) =>
      answer(
        `statfs ${path}`,
        async () => {
          const s = await core.statfs();
          return {
            bsize: s.bsize,
            frsize: s.bsize,
            blocks: s.blocks,
            bfree: s.bfree,
            bavail: s.bavail,
            files: s.files,
            ffree: s.ffree,
            favail: s.ffree,
            fsid: 0,
            flag: 0,
            namemax: s.namemax,
          };
        },
        cb,
      ),
  };
}
