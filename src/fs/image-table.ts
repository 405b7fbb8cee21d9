import * as fs from 'node:fs/promises';
import createDebug from 'debug';
import type { DriverTuning, Image } from '../image';
import { ImageLock, openImage, writerElsewhere } from '../image';
import { VdiskError } from '../io/errors';
import { EVERYTHING, OrderedRangeLock } from '../io/range-lock';
import type { Confinement } from '../image/confine';
import { NullImage } from '../formats/null/null-image';
import { RequestMerger, type MergerOptions } from '../merge';
import { SessionStats } from './session-stats';
import type { ImageView } from './view-tree';

/** How long a lock test of an image not open here is trusted: the kernel's attribute timeout. */
const LOCK_TEST_TTL_MS = 1000;
/** Past this many kept tests, they are all dropped (each is one cheap test to redo). */
const LOCK_TESTS_KEPT = 65536;

const log = createDebug('vdiskfs:fs');

export interface ImageTableOptions {
  readOnly: boolean;
  nullDriver: boolean;
  /** Per-driver knobs, passed to every image opened (src/formats/types.ts). */
  tuning?: DriverTuning;
  merger: MergerOptions;
  /** What images may reach (src/image/confine.ts). */
  confinement: Confinement;
  warn: (message: string) => void;
  /** Keep every closed image's counters for the report at unmount (--stats); off, nothing per image is kept. */
  keepStats?: boolean;
  /** True when another image in the tree uses this one as its backing file / parent. */
  isBackingOfAnother(hostPath: string): Promise<boolean>;
}

/** One image opened by the mount, shared by every handle on its view. */
export interface OpenImage {
  readonly key: string;
  view: ImageView;
  image: Image;
  merger: RequestMerger;
  refs: number;
  /** Why writes are refused, if they are. */
  readOnlyReason?: string;
  /** QEMU's image locks on the view's host files, held while it is open (src/image/locks.ts). */
  lock?: ImageLock;
  /** readOnlyReason is someone else's lock: a later writable open tries again. */
  lockedOut?: boolean;
}

/** Shown when someone else's image lock keeps a view read-only. */
const LOCKED_OUT = 'locked by another process (QEMU or another vdiskfs mount is writing it)';

/**
 * Opens images lazily on first open(), shares them between handles, and closes them (merger
 * drained, image flushed and closed) when the last handle is released — so that an image
 * nobody has open is always consistent on disk, for qemu-img and friends.
 */
export class ImageTable {
  private readonly open = new Map<string, OpenImage>();
  /** Per-image serialisation of open/upgrade/close, so a quick reopen never races a close (see locked). */
  private readonly locks = new Map<string, OrderedRangeLock>();
  /** Every closed image's counters, for `--stats` at unmount. */
  readonly sessionStats = new SessionStats();

  constructor(private readonly opts: ImageTableOptions) {}

  static keyOf(view: ImageView): string {
    return view.snapshot === undefined ? view.hostPath : `${view.hostPath}@${view.snapshot}`;
  }

  isOpen(hostPath: string): boolean {
    for (const e of this.open.values()) if (e.view.hostPath === hostPath) return true;
    return false;
  }

  get(view: ImageView): OpenImage | undefined {
    return this.open.get(ImageTable.keyOf(view));
  }

  /** Why this view must be read-only (checked before opening, so nothing is opened writable by mistake). */
  async readOnlyReason(view: ImageView): Promise<string | undefined> {
    if (this.opts.readOnly) return 'mounted with --read-only';
    if (view.snapshot !== undefined) return 'snapshots are shown read-only';
    try {
      await fs.access(view.hostPath, fs.constants.W_OK);
      const st = await fs.stat(view.hostPath);
      if ((st.mode & 0o222) === 0) return 'the image file has no write permission';
    } catch {
      return 'the image file is not writable';
    }
    if (await this.opts.isBackingOfAnother(view.hostPath)) return 'another image uses it as its backing file';
    return undefined; // someone else's image lock is found by acquire(), which takes ours at the same time
  }

  /**
   * Does someone else write this view's image (QEMU's lock test)? Then getattr shows it 0444.
   * For an image nobody here has open, the test opens its host files: its answer is kept for as
   * long as the kernel keeps attributes (LOCK_TEST_TTL_MS), so `ls -l` of a folder of thousands
   * of images costs one test per image, not one per getattr. Only the mode shown can be that
   * old: an open for writing takes the locks itself (acquire) and is refused at once.
   */
  async lockedByOthers(view: ImageView): Promise<boolean> {
    if (this.opts.readOnly || this.opts.nullDriver) return false;
    const entry = this.get(view);
    if (entry && !entry.image.readOnly) return false;
    if (entry?.lock) return entry.lock.test('write') !== undefined;
    const key = view.hostFiles.join('\0');
    const now = Date.now();
    const known = this.lockTests.get(key);
    if (known && now - known.at < LOCK_TEST_TTL_MS) return known.locked;
    const locked = (await writerElsewhere(view.hostFiles).catch(() => undefined)) !== undefined;
    // Dropped all at once when full, never one sweep per test (a folder of thousands would make each test O(n)).
    if (this.lockTests.size >= LOCK_TESTS_KEPT) this.lockTests.clear();
    this.lockTests.set(key, { at: now, locked });
    return locked;
  }

  /** Recent lock tests of images not open here (lockedByOthers). */
  private readonly lockTests = new Map<string, { at: number; locked: boolean }>();

  async acquire(view: ImageView, wantWrite: boolean): Promise<OpenImage> {
    const key = ImageTable.keyOf(view);
    return this.locked(key, async () => {
      let entry = this.open.get(key);
      if (entry && wantWrite && entry.image.readOnly && (entry.readOnlyReason === undefined || entry.lockedOut))
        await this.reopenWritable(entry);
      if (!entry) {
        entry = await this.openEntry(view, wantWrite);
        this.open.set(key, entry);
      }
      entry.refs++;
      return entry;
    });
  }

  /** Opens a view's image. Locks first, so an image someone else writes is never opened writable, not even for a moment. */
  private async openEntry(view: ImageView, wantWrite: boolean): Promise<OpenImage> {
    const key = ImageTable.keyOf(view);
    let reason = wantWrite ? await this.readOnlyReason(view) : undefined;
    const lock = this.opts.nullDriver ? undefined : await ImageLock.open(view.hostFiles);
    const lockedOut = wantWrite && reason === undefined && !this.takeWriteLock(lock, key);
    if (lockedOut) reason = LOCKED_OUT;
    const writable = wantWrite && reason === undefined;
    try {
      const conflict = writable ? undefined : lock?.set('read');
      if (conflict) throw new VdiskError('EBUSY', `${conflict}: another process refuses to share reading it`);
      const image = await this.openImageFor(view, writable);
      if (writable) reason = this.driverRefusedWrite(image, lock);
      log('opened %s (%s)', key, image.readOnly ? 'read-only' : 'writable');
      return { key, view, image, merger: new RequestMerger(image, this.opts.merger), refs: 0, readOnlyReason: reason, lock, lockedOut };
    } catch (e) {
      await lock?.close();
      throw e;
    }
  }

  /** A read-only entry becomes writable for this handle and the others, unless someone else's lock is in the way. */
  private async reopenWritable(entry: OpenImage): Promise<void> {
    if (!this.takeWriteLock(entry.lock, entry.key)) {
      entry.readOnlyReason = LOCKED_OUT;
      entry.lockedOut = true;
      return;
    }
    // The writable image opens beside the read-only one, which serves on meanwhile and stays if
    // this fails: the handles already reading it must not lose their image to someone's open.
    let image: Image;
    try {
      image = await this.openImageFor(entry.view, true);
    } catch (e) {
      entry.lock?.set('read');
      throw e;
    }
    const old = entry.merger;
    entry.image = image;
    entry.merger = new RequestMerger(image, this.opts.merger);
    entry.lockedOut = false;
    entry.readOnlyReason = this.driverRefusedWrite(image, entry.lock);
    log('reopened %s writable', entry.key);
    // Read-only: nothing to flush. Its close waits for the reads still in it.
    await old.close().catch((e: Error) => this.opts.warn(`closing the read-only ${entry.key} failed: ${e.message}`));
  }

  /** Takes QEMU's writer locks (true), or logs whose lock is in the way and keeps the old ones (false). */
  private takeWriteLock(lock: ImageLock | undefined, key: string): boolean {
    const conflict = lock?.set('write');
    if (conflict) log('%s stays read-only: %s', key, conflict);
    return conflict === undefined;
  }

  /** A driver may open read-only anyway (corrupt bit, read-only extent): then we let others write. */
  private driverRefusedWrite(image: Image, lock: ImageLock | undefined): string | undefined {
    if (!image.readOnly) return undefined;
    lock?.set('read');
    return 'the driver opened it read-only (see log)';
  }

  async release(entry: OpenImage): Promise<void> {
    await this.locked(entry.key, async () => {
      entry.refs--;
      if (entry.refs > 0) return;
      this.open.delete(entry.key);
      try {
        await entry.merger.close(); // drains pending writes, flushes and closes the image
      } finally {
        await entry.lock?.close(); // after the last write is on disk
        this.logStats(entry);
      }
    });
  }

  /** Unmount: drain and close everything still open, reporting (not hiding) failures. */
  async closeAll(): Promise<Error[]> {
    const errors: Error[] = [];
    for (const entry of [...this.open.values()]) {
      entry.refs = 1;
      await this.release(entry).catch((e: Error) => {
        errors.push(e);
        this.opts.warn(`closing ${entry.key} failed: ${e.message}`);
      });
    }
    return errors;
  }

  private async openImageFor(view: ImageView, writable: boolean): Promise<Image> {
    if (this.opts.nullDriver) return new NullImage(view.hostPath, view.virtualSize);
    return openImage(view.hostPath, {
      writable,
      format: view.driver.name,
      tuning: this.opts.tuning,
      warn: this.opts.warn,
      confinement: this.opts.confinement,
      progress: everyFewSeconds((f, d) =>
        this.opts.warn(`${view.hostPath}: still opening, ${Math.floor(f * 100)}% done${d ? ` (${d})` : ''}`),
      ),
      ...(view.snapshot !== undefined ? { snapshot: view.snapshot } : {}),
    });
  }

  private logStats(entry: OpenImage): void {
    // Counted only when someone reads them: a folder of thousands of images opens and closes each.
    if (!this.opts.keepStats && !log.enabled) return;
    const s = entry.image.stats();
    if (this.opts.keepStats) this.sessionStats.add(entry.key, s, entry.merger.stats());
    const io = Object.values(s.io).reduce(
      (a, c) => ({ reads: a.reads + c.reads, writes: a.writes + c.writes, flushes: a.flushes + c.flushes }),
      { reads: 0, writes: 0, flushes: 0 },
    );
    log(
      'closed %s: host reads=%d writes=%d flushes=%d driver=%o merger=%o',
      entry.key,
      io.reads,
      io.writes,
      io.flushes,
      s.driver,
      entry.merger.stats(),
    );
  }

  /** Runs `fn` once every earlier open/upgrade/close of `key` has finished; the key's lock goes when idle. */
  private locked<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const lock = this.locks.get(key) ?? new OrderedRangeLock();
    this.locks.set(key, lock);
    return lock.run(0, EVERYTHING, false, fn).finally(() => {
      if (lock.count === 0 && this.locks.get(key) === lock) this.locks.delete(key);
    });
  }
}

/** Long work at open (a refcount rebuild after a crash) is logged every few seconds, not on every step. */
const PROGRESS_LOG_MS = 5000;

function everyFewSeconds(log: (fraction: number, detail?: string) => void): (fraction: number, detail?: string) => void {
  let next = Date.now() + PROGRESS_LOG_MS;
  return (f, d) => {
    if (Date.now() < next) return;
    next = Date.now() + PROGRESS_LOG_MS;
    log(f, d);
  };
}
