import * as fs from 'node:fs/promises';
import createDebug from 'debug';
import type { Image } from '../image';
import { foreignLocks, openImage, otherWriters } from '../image';
import { NullImage } from '../formats/null/null-image';
import { RequestMerger, type MergerOptions } from '../merge';
import { SessionStats } from './session-stats';
import type { ImageView } from './view-tree';

const log = createDebug('vdiskfs:fs');

export interface ImageTableOptions {
  readOnly: boolean;
  nullDriver: boolean;
  cacheSize?: number;
  noMultiAlloc?: boolean;
  merger: MergerOptions;
  warn(message: string): void;
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
}

/**
 * Opens images lazily on first open(), shares them between handles, and closes them (merger
 * drained, image flushed and closed) when the last handle is released — so that an image
 * nobody has open is always consistent on disk, for qemu-img and friends.
 */
export class ImageTable {
  private readonly open = new Map<string, OpenImage>();
  /** Per-image serialisation of open/upgrade/close, so a quick reopen never races a close. */
  private readonly locks = new Map<string, Promise<unknown>>();
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
    const locks = await foreignLocks(view.hostPath).catch(() => undefined);
    if (locks) return `another program has it open${locks.writer ? ' for writing' : ''} (QEMU's image locks are held: a running VM, qemu-io or qemu-storage-daemon?)`;
    for (const file of view.hostFiles) {
      const writers = await otherWriters(file).catch(() => []);
      if (writers.length) return `process ${writers.join(', ')} has ${file === view.hostPath ? 'it' : file} open for writing (another vdiskfs mount? a VM?)`;
    }
    return undefined;
  }

  async acquire(view: ImageView, wantWrite: boolean): Promise<OpenImage> {
    const key = ImageTable.keyOf(view);
    return this.locked(key, async () => {
      let entry = this.open.get(key);
      if (entry && wantWrite && entry.image.readOnly && entry.readOnlyReason === undefined) {
        // Opened read-only so far; reopen writable for this handle and the others.
        await entry.merger.close(); // drains, flushes and closes the read-only image
        entry.image = await this.openImageFor(view, true);
        entry.merger = new RequestMerger(entry.image, this.opts.merger);
        log('reopened %s writable', key);
      }
      if (!entry) {
        const reason = wantWrite ? await this.readOnlyReason(view) : undefined;
        const image = await this.openImageFor(view, wantWrite && reason === undefined);
        entry = { key, view, image, merger: new RequestMerger(image, this.opts.merger), refs: 0, readOnlyReason: reason };
        if (wantWrite && reason === undefined && image.readOnly) entry.readOnlyReason = 'the driver opened it read-only (see log)';
        this.open.set(key, entry);
        log('opened %s (%s)', key, image.readOnly ? 'read-only' : 'writable');
      }
      entry.refs++;
      return entry;
    });
  }

  async release(entry: OpenImage): Promise<void> {
    await this.locked(entry.key, async () => {
      entry.refs--;
      if (entry.refs > 0) return;
      this.open.delete(entry.key);
      try {
        await entry.merger.close(); // drains pending writes, flushes and closes the image
      } finally {
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
      cacheSize: this.opts.cacheSize,
      noMultiAlloc: this.opts.noMultiAlloc,
      warn: this.opts.warn,
      ...(view.snapshot !== undefined ? { snapshot: view.snapshot } : {}),
    });
  }

  private logStats(entry: OpenImage): void {
    const s = entry.image.stats();
    this.sessionStats.add(entry.key, s, entry.merger.stats());
    const io = Object.values(s.io).reduce((a, c) => ({ reads: a.reads + c.reads, writes: a.writes + c.writes, flushes: a.flushes + c.flushes }), { reads: 0, writes: 0, flushes: 0 });
    log('closed %s: host reads=%d writes=%d flushes=%d driver=%o merger=%o', entry.key, io.reads, io.writes, io.flushes, s.driver, entry.merger.stats());
  }

  private locked<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(key) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    const tail = next.catch(() => undefined);
    this.locks.set(key, tail);
    void tail.then(() => {
      if (this.locks.get(key) === tail) this.locks.delete(key);
    });
    return next;
  }
}
