import * as fs from 'node:fs/promises';
import createDebug from 'debug';
import type { Operations, Stat } from 'fuse-native';
import { VdiskError } from '../io/errors';
import { errno, toErrno } from './errno';
import { HandleTable, handleMode, wantsWrite } from './handles';
import type { ImageTable } from './image-table';
import type { ImageView, ViewTree } from './view-tree';

const log = createDebug('vdiskfs:fs');

export interface OperationsContext {
  tree: ViewTree;
  images: ImageTable;
  handles: HandleTable;
  readOnly: boolean;
  warn(message: string): void;
}

/** Runs an async operation and answers FUSE with 0/value or a negative errno; never throws. */
function answer<T>(what: string, fn: () => Promise<T>, cb: (err: number, v?: T) => void): void {
  fn().then(
    (v) => cb(0, v),
    (e) => {
      const code = toErrno(e);
      if (code === errno('EIO')) log('%s failed: %s', what, (e as Error)?.stack ?? e);
      else log('%s: %s', what, (e as Error)?.message ?? e);
      cb(code);
    },
  );
}

function dirStat(st: import('node:fs').Stats): Stat {
  return { mtime: st.mtime, atime: st.atime, ctime: st.ctime, size: 4096, mode: 0o40000 | 0o755, uid: st.uid, gid: st.gid, nlink: 2 };
}

/**
 * The FUSE adapter: getattr/readdir/open/read/write/flush/fsync/release/truncate, talking to the
 * image table and each image's merger. fuse-native's buffers belong to the kernel request:
 * writes are copied by the merger before its first await, reads are filled in place.
 */
export function makeOperations(ctx: OperationsContext): Operations {
  const { tree, images, handles } = ctx;

  async function imageView(path: string): Promise<ImageView> {
    const entry = await tree.resolve(path);
    if (!entry) throw new VdiskError('ENOENT', `${path} is not shown`);
    if (entry.kind !== 'image') throw new VdiskError('EINVAL', `${path} is a folder`);
    return entry;
  }

  async function statOf(path: string): Promise<Stat> {
    const entry = await tree.resolve(path);
    if (!entry) throw new VdiskError('ENOENT', `${path} is not shown`);
    const st = await fs.stat(entry.hostPath);
    if (entry.kind === 'dir') return dirStat(st);
    const open = images.get(entry);
    const size = open ? open.image.virtualSize : entry.virtualSize;
    const files = open ? open.image.hostFiles() : entry.hostFiles;
    let blocks = 0;
    for (const f of files) blocks += (await fs.stat(f).catch(() => undefined))?.blocks ?? 0;
    const readOnly = ctx.readOnly || entry.snapshot !== undefined || (open?.readOnlyReason !== undefined && open.image.readOnly) || (st.mode & 0o222) === 0;
    return {
      mtime: st.mtime, atime: st.atime, ctime: st.ctime,
      size, blocks, blksize: 4096,
      mode: 0o100000 | (readOnly ? 0o444 : 0o644),
      uid: st.uid, gid: st.gid, nlink: 1,
    };
  }

  return {
    getattr(path, cb) {
      answer(`getattr ${path}`, () => statOf(path), cb);
    },

    fgetattr(path, _fd, cb) {
      answer(`fgetattr ${path}`, () => statOf(path), cb);
    },

    readdir(path, cb) {
      answer(`readdir ${path}`, async () => (await tree.list(path)).map((e) => e.name), (err, names) => cb(err, names));
    },

    open(path, flags, cb) {
      answer(`open ${path}`, async () => {
        const view = await imageView(path);
        const write = wantsWrite(flags);
        if (write) {
          const reason = ctx.readOnly ? 'mounted with --read-only' : await images.readOnlyReason(view);
          if (reason) throw VdiskError.readOnly(`${path} is read-only: ${reason}`);
        }
        const entry = await images.acquire(view, write);
        if (write && entry.image.readOnly) {
          await images.release(entry);
          throw VdiskError.readOnly(`${path} is read-only: ${entry.readOnlyReason ?? 'opened read-only by its driver'}`);
        }
        const fd = handles.add({ entry, writable: write, ...handleMode(flags) });
        log('open %s flags=%s fd=%d', path, flags.toString(8), fd);
        return fd;
      }, cb);
    },

    read(path, fd, buf, len, pos, cb) {
      const h = handles.get(fd);
      if (!h) return cb(errno('EBADF'));
      const size = h.entry.image.virtualSize;
      if (pos >= size) return cb(0);
      const n = Math.min(len, size - pos);
      h.entry.merger.read(pos, buf.subarray(0, n)).then(
        () => cb(n),
        (e: unknown) => {
          log('read %s %d+%d failed: %s', path, pos, n, (e as Error)?.message);
          cb(toErrno(e));
        },
      );
    },

    write(path, fd, buf, len, pos, cb) {
      const h = handles.get(fd);
      if (!h) return cb(errno('EBADF'));
      if (!h.writable) return cb(errno('EBADF'));
      const size = h.entry.image.virtualSize;
      if (pos >= size) return cb(errno('ENOSPC'));
      const n = Math.min(len, size - pos);
      // The merger copies `buf` synchronously, before anything is awaited.
      h.entry.merger.write(pos, buf.subarray(0, n), { writeThrough: h.writeThrough, sync: h.sync }).then(
        () => cb(n),
        (e: unknown) => {
          log('write %s %d+%d failed: %s', path, pos, n, (e as Error)?.message);
          cb(toErrno(e));
        },
      );
    },

    flush(path, fd, cb) {
      const h = handles.get(fd);
      if (!h) return cb(0);
      // close(2) of a writer: drain and make durable, so errors reach the closing program.
      answer(`flush ${path}`, async () => (h.writable ? h.entry.merger.flush() : undefined), cb);
    },

    fsync(path, _datasync, fd, cb) {
      const h = handles.get(fd);
      if (!h) return cb(errno('EBADF'));
      answer(`fsync ${path}`, () => h.entry.merger.flush(), cb);
    },

    release(path, fd, cb) {
      const h = handles.remove(fd);
      if (!h) return cb(0);
      answer(`release ${path}`, () => images.release(h.entry), cb);
    },

    truncate(path, size, cb) {
      answer(`truncate ${path}`, () => resize(path, size), cb);
    },

    ftruncate(path, _fd, size, cb) {
      answer(`ftruncate ${path}`, () => resize(path, size), cb);
    },

    utimens(_path, _a, _m, cb) {
      cb(0); // `touch` on a view is harmless; times come from the image file
    },

    statfs(path, cb) {
      answer(`statfs ${path}`, async () => {
        const s = await fs.statfs(tree.root);
        return { bsize: s.bsize, frsize: s.bsize, blocks: s.blocks, bfree: s.bfree, bavail: s.bavail, files: s.files, ffree: s.ffree, favail: s.ffree, fsid: 0, flag: 0, namemax: 255 };
      }, cb);
    },
  };

  async function resize(path: string, size: number): Promise<void> {
    const view = await imageView(path);
    const reason = ctx.readOnly ? 'mounted with --read-only' : await images.readOnlyReason(view);
    if (reason) throw VdiskError.readOnly(`${path} is read-only: ${reason}`);
    const entry = await images.acquire(view, true);
    try {
      if (size === entry.image.virtualSize) return;
      if (size < entry.image.virtualSize) {
        ctx.warn(`refused to shrink ${path} to ${size} bytes (shrinking loses data; for dd use conv=notrunc)`);
        throw VdiskError.invalid('shrinking an image is not supported');
      }
      if (!entry.image.resize) throw VdiskError.unsupported(`${view.driver.name} images cannot be resized`);
      await entry.merger.flush();
      await entry.image.resize(size);
      tree.invalidate(view.hostPath);
    } finally {
      await images.release(entry);
    }
  }
}
