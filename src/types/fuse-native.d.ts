// fuse-native ships no types; this is the subset vdiskfs uses.
declare module 'fuse-native' {
  type Cb<T = void> = T extends void ? (err: number) => void : (err: number, value?: T) => void;
  export interface Stat {
    mtime: Date;
    atime: Date;
    ctime: Date;
    size: number;
    mode: number;
    uid: number;
    gid: number;
    nlink?: number;
    blocks?: number;
    blksize?: number;
    ino?: number;
    dev?: number;
    rdev?: number;
  }
  export interface Operations {
    init?(cb: (err: number) => void): void;
    getattr?(path: string, cb: (err: number, stat?: Stat) => void): void;
    fgetattr?(path: string, fd: number, cb: (err: number, stat?: Stat) => void): void;
    readdir?(path: string, cb: (err: number, names?: string[], stats?: Stat[]) => void): void;
    open?(path: string, flags: number, cb: (err: number, fd?: number) => void): void;
    read?(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (bytesOrErr: number) => void): void;
    write?(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (bytesOrErr: number) => void): void;
    flush?(path: string, fd: number, cb: (err: number) => void): void;
    fsync?(path: string, datasync: number, fd: number, cb: (err: number) => void): void;
    release?(path: string, fd: number, cb: (err: number) => void): void;
    truncate?(path: string, size: number, cb: (err: number) => void): void;
    ftruncate?(path: string, fd: number, size: number, cb: (err: number) => void): void;
    statfs?(path: string, cb: (err: number, st?: Record<string, number>) => void): void;
    utimens?(path: string, atime: unknown, mtime: unknown, cb: (err: number) => void): void;
    chmod?(path: string, mode: number, cb: (err: number) => void): void;
    chown?(path: string, uid: number, gid: number, cb: (err: number) => void): void;
    create?(path: string, mode: number, cb: (err: number, fd?: number) => void): void;
    unlink?(path: string, cb: (err: number) => void): void;
    access?(path: string, mode: number, cb: (err: number) => void): void;
  }
  export interface FuseOptions {
    timeout?: number | false | Record<string, number | false>;
    force?: boolean;
    mkdir?: boolean;
    debug?: boolean;
    allowOther?: boolean;
    fsname?: string;
    subtype?: string;
    entryTimeout?: number;
    attrTimeout?: number;
    maxRead?: number;
  }
  export default class Fuse {
    constructor(mnt: string, ops: Operations, opts?: FuseOptions);
    mnt: string;
    opts: FuseOptions;
    mount(cb: (err: Error | null) => void): void;
    unmount(cb: (err: Error | null) => void): void;
    protected _fuseOptions(): string;
    static unmount(mnt: string, cb: (err: Error | null) => void): void;
    static EPERM: number;
    static ENOENT: number;
    static EIO: number;
    static EROFS: number;
    static EINVAL: number;
    static ENOSPC: number;
    static EFBIG: number;
    static EBUSY: number;
    static EACCES: number;
    static EISDIR: number;
    static ENOTDIR: number;
    static ENOTSUP: number;
    static EEXIST: number;
    static ENOSYS: number;
    static EBADF: number;
  }
}
