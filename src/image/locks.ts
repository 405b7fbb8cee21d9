import { VdiskError } from '../io/errors';
import { HostFile } from '../io/host-file';

/**
 * QEMU's image-lock protocol (qemu/qemu block/file-posix.c, raw_apply_lock_bytes and
 * raw_check_lock_bytes), so QEMU and vdiskfs see each other's readers and writers. On every host
 * file of an image, each user holds an OFD read lock on byte 100+N while it uses permission N and
 * on byte 200+N while it refuses to share permission N. Before relying on its permissions a user
 * tests (as if for a write lock, which any other holder blocks) byte 200+N for each permission it
 * uses and byte 100+N for each one it does not share. Locks are applied before they are tested,
 * so of two users racing for the same image at least one always sees the other.
 */

/** Permission bits (include/block/block-common.h): N in "byte 100+N" is the bit's index. */
export const PERM_CONSISTENT_READ = 0x1;
export const PERM_WRITE = 0x2;
export const PERM_WRITE_UNCHANGED = 0x4;
export const PERM_RESIZE = 0x8;
const PERM_COUNT = 4; // BLK_PERM_ALL = 0x0f
const PERM_NAMES = ['consistent read', 'write', 'write unchanged', 'resize'];
const PERM_BASE = 100;
const SHARED_BASE = 200;

export interface LockPerms {
  /** Permissions in use. */
  perm: number;
  /** Permissions refused to others. */
  unshared: number;
}

/** What each kind of user of an image takes; the same bytes QEMU's users take (seen in /proc/locks). */
export const LOCK_MODES = {
  /** A view opened read-only, and `-U`: reads and lets anyone write (as qemu-img -U). */
  read: { perm: PERM_CONSISTENT_READ, unshared: 0 },
  /** `vdiskfs info/check/map`: reads, refuses writers meanwhile (as qemu-img without -U). */
  sharedRead: { perm: PERM_CONSISTENT_READ, unshared: PERM_WRITE | PERM_RESIZE },
  /** A writable view, `check -r`: what a QEMU writer takes (qemu-io, a VM, qemu-storage-daemon). */
  write: { perm: PERM_CONSISTENT_READ | PERM_WRITE | PERM_RESIZE, unshared: PERM_WRITE | PERM_RESIZE },
} satisfies Record<string, LockPerms>;
export type LockMode = keyof typeof LOCK_MODES;

/** Every lock byte of the protocol: 100..103 and 200..203. */
const ALL_BYTES = Array.from({ length: PERM_COUNT }, (_, i) => [PERM_BASE + i, SHARED_BASE + i]).flat();

/** The lock bytes one mode holds. */
function bytesOf(p: LockPerms): Set<number> {
  const out = new Set<number>();
  for (let i = 0; i < PERM_COUNT; i++) {
    if (p.perm & (1 << i)) out.add(PERM_BASE + i);
    if (p.unshared & (1 << i)) out.add(SHARED_BASE + i);
  }
  return out;
}

/**
 * The image lock: one extra read-only descriptor per host file that holds the lock bytes (QEMU's
 * lock_fd idea), so reopening the image itself never drops or re-takes a lock by accident.
 * Closing it drops every lock.
 */
export class ImageLock {
  private held: LockPerms | undefined;
  /** Bytes locked now, per file (the same on every file). */
  private readonly locked = new Set<number>();

  private constructor(private readonly files: HostFile[]) {}

  /** Opens the lock descriptors (non-blocking, regular files only, see HostFile.open); holds nothing yet. */
  static async open(paths: string[]): Promise<ImageLock> {
    const files: HostFile[] = [];
    try {
      for (const p of new Set(paths)) files.push(await HostFile.open(p, false));
    } catch (e) {
      await Promise.all(files.map((f) => f.close().catch(() => undefined)));
      throw e;
    }
    return new ImageLock(files);
  }

  /** The permissions held now (undefined: none). */
  get mode(): LockPerms | undefined {
    return this.held;
  }

  /**
   * Moves to `mode`, as QEMU changes permissions: takes the new bytes while keeping the old ones,
   * tests for conflicts, then drops what is no longer needed. On a conflict the old locks stay
   * and QEMU's wording of the conflict is returned ('/x.qcow2: Failed to get "write" lock').
   */
  set(mode: LockMode | LockPerms): string | undefined {
    const next = typeof mode === 'string' ? LOCK_MODES[mode] : mode;
    const old = this.held ?? { perm: 0, unshared: 0 };
    const conflict = this.apply({ perm: old.perm | next.perm, unshared: old.unshared | next.unshared }) ?? this.test(next);
    this.apply(conflict ? old : next); // only unlocks: cannot conflict
    if (!conflict) this.held = next;
    return conflict;
  }

  /** Would `mode` conflict with someone else's locks now? Our own locks never do. */
  test(mode: LockMode | LockPerms): string | undefined {
    const p = typeof mode === 'string' ? LOCK_MODES[mode] : mode;
    for (const f of this.files) {
      // One test over every lock byte first: most images nobody else has open hold none (a
      // folder of thousands is tested once per `ls -l`), and only then byte by byte.
      if (!f.testLockBytes(PERM_BASE, SHARED_BASE + PERM_COUNT - PERM_BASE, 'write')) continue;
      for (let i = 0; i < PERM_COUNT; i++) {
        // Someone refuses to share a permission we use.
        if (p.perm & (1 << i) && f.testLockBytes(SHARED_BASE + i, 1, 'write')) return `${f.path}: Failed to get "${PERM_NAMES[i]}" lock`;
      }
      for (let i = 0; i < PERM_COUNT; i++) {
        // Someone uses a permission we refuse to share.
        if (p.unshared & (1 << i) && f.testLockBytes(PERM_BASE + i, 1, 'write'))
          return `${f.path}: Failed to get shared "${PERM_NAMES[i]}" lock`;
      }
    }
    return undefined;
  }

  /** Drops every lock (closing the descriptors does it). */
  async close(): Promise<void> {
    this.held = undefined;
    this.locked.clear();
    await Promise.all(this.files.map((f) => f.close()));
  }

  /** Holds exactly the bytes of `p` on every file; a byte someone holds exclusively is a conflict. */
  private apply(p: LockPerms): string | undefined {
    const want = bytesOf(p);
    for (const b of ALL_BYTES) {
      if (want.has(b) === this.locked.has(b)) continue;
      for (const f of this.files) {
        if (f.lockBytes(b, 1, want.has(b) ? 'read' : 'unlock')) continue;
        this.locked.add(b); // partly taken: the caller's next apply() releases it everywhere
        return `${f.path}: Failed to lock byte ${b}`;
      }
      if (want.has(b)) this.locked.add(b);
      else this.locked.delete(b);
    }
    return undefined;
  }
}
/**
 * Opens and takes an image lock for a command-line tool, or throws one line the way qemu-img
 * says it (mentioning -U for readers).
 */
export async function lockImage(paths: string[], mode: LockMode): Promise<ImageLock> {
  const lock = await ImageLock.open(paths);
  const conflict = lock.set(mode);
  if (!conflict) return lock;
  await lock.close();
  const hint = mode === 'write' ? 'Is another process using the image?' : 'Is another process using the image? (-U reads it anyway)';
  throw new VdiskError('EBUSY', `${conflict}. ${hint}`, { paths, mode });
}

/** Someone else writes (or refuses to share writing) one of these files: QEMU's test, without taking anything. */
export async function writerElsewhere(paths: string[]): Promise<string | undefined> {
  const lock = await ImageLock.open(paths);
  try {
    return lock.test('write');
  } finally {
    await lock.close();
  }
}
