import fs from 'node:fs';
import * as path from 'node:path';
import createDebug from 'debug';
import type { FormatDriver } from '../image';
import { probeImage, readHead, detectFormat, extensionOf, drivers, openImage } from '../image';
import { isVdiskError } from '../io/errors';
import type { Image } from '../image';
import type { Confinement } from '../image/confine';
import type { Partition } from '../image/partition-table';

const log = createDebug('vdiskfs:fs');

/** The suffix every raw view carries: `<images>/a/b.qcow2` is shown as `/a/b.qcow2.raw`. */
export const VIEW_SUFFIX = '.raw';
/** As long as the kernel caches attributes (attr_timeout): a lookup within it reuses the last listing. */
const LISTING_TTL_MS = 1000;
const FAILED_PROBE_RETRY_MS = 2000;
/** `disk.qcow2.raw` + partition 2 → `disk.qcow2.p2.raw` (Linux numbering). */
export function partitionViewName(diskViewName: string, suffix: string, n: number): string {
  return `${diskViewName.slice(0, -suffix.length)}.p${n}${suffix}`;
}
/** Internal snapshots are shown read-only as `b.qcow2@<snapshot>.raw`. */
export const SNAPSHOT_SEPARATOR = '@';

export interface ImageView {
  kind: 'image';
  hostPath: string;
  driver: FormatDriver;
  snapshot?: string;
  /** As found when the image was validated (the open image is asked when there is one). */
  virtualSize: number;
  hostFiles: string[];
  /** A partition file: a window on the disk view (src/fs/partition-views.ts). */
  partition?: Partition;
}
export type ViewEntry = { kind: 'dir'; hostPath: string } | ImageView;

export interface ViewTreeOptions {
  includeRaw: boolean;
  /** Logs one line; called once per left-out file (until the file changes). */
  warn: (message: string) => void;
  /** True while the mount has this image open: its probe is kept (our own writes change mtime). */
  isOpen(hostPath: string): boolean;
  /** What images in this tree may reach (src/image/confine.ts). */
  confinement: Confinement;
  /** The partitions of a disk view, shown as files beside it; absent with --no-partitions. */
  partitionsOf?(view: ImageView, fileStamp?: string): Promise<Partition[]>;
  /** Reads a view's partition table from `image`, open for the probe (so listing needs no second open). */
  readPartitions?(view: ImageView, image: Image): Promise<void>;
}

interface Probed {
  key: string;
  at: number;
  driver?: FormatDriver;
  error?: string;
  snapshots?: string[];
  aux?: string[];
  backing?: string;
  /** Virtual size per view: '' for the active layer, else the snapshot name. */
  sizes?: Map<string, number>;
  hostFiles?: string[];
}

type Shown = { name: string; entry: ViewEntry };

/**
 * One folder as last listed: what each host entry (a sub-folder, or an image file) shows, in the
 * folder's order, and every shown name for lookups.
 */
interface Listing {
  /** When the listing began (ms), and the folder's mtime and inode then. */
  at: number;
  dirStamp: string;
  /** Host entry name → what it shows (a left-out file shows nothing). */
  groups: Map<string, Shown[]>;
  byName: Map<string, ViewEntry>;
  /** Host files some image there claims (VMDK extents, qcow2 data files): never shown alone. */
  aux: Set<string>;
  /** Host files whose shown entries must be built again before they are used (partition table changed). */
  stale: Set<string>;
}

/**
 * A folder's mtime only tells of a change made after it settled: timestamps come from the
 * kernel's coarse clock, so an entry added in the same tick as the last listing may leave the
 * mtime as it was. A listing begun this long after the mtime it saw is trusted while the mtime
 * stays the same.
 */
const MTIME_SETTLED_MS = 100;
/** How old a lookup's stat of a file may be for getattr to answer from it (the same request). */
const JUST_TAKEN_MS = 2;

/**
 * Maps the mounted namespace to host files. Folders are mirrored; files are probed by content
 * (results cached until the file's mtime/size changes), so images added or removed in the
 * folder show up on the next readdir.
 *
 * Built for folders of thousands of images (#20): a lookup costs two stats (the folder's and the
 * file's) against the last listing, never a new listing of the folder unless the folder changed;
 * a changed file is probed again alone; metadata calls are synchronous (each is microseconds, a
 * thread-pool trip costs more than the call).
 */
export class ViewTree {
  private readonly probes = new Map<string, Probed>();
  private readonly listings = new Map<string, Listing>();
  private readonly warned = new Map<string, string>();

  /**
   * The root is its real path (the confinement's own): then every file a listing finds is a real
   * path too (listings never descend through a symlink, nor probe one), and opening it needs no
   * realpath(3).
   */
  private readonly rootIsReal: boolean;

  constructor(
    readonly root: string,
    private readonly opts: ViewTreeOptions,
  ) {
    this.rootIsReal = opts.confinement.roots[0] === root;
  }

  hostPathOf(viewPath: string): string {
    return path.join(this.root, viewPath);
  }

  /** The entries of a mounted folder, read afresh (readdir must show added and removed images). */
  async list(viewDir: string): Promise<Shown[]> {
    const listing = await this.readListing(viewDir);
    this.listings.set(viewDir, listing);
    return entriesOf(listing);
  }

  /**
   * What the whole tree shows, counted in this process: disk views (snapshots and partitions not
   * counted) and image files left out. Lists every folder as readdir would, so each image is
   * probed now and each left-out one logged, without a FUSE round trip per entry.
   */
  async census(viewDir = '/'): Promise<{ shown: number; leftOut: number }> {
    const total = { shown: 0, leftOut: 0 };
    let listing: Listing;
    try {
      await this.list(viewDir);
      listing = this.listings.get(viewDir)!;
    } catch {
      return total; // a folder we may not read is shown empty, as readdir shows it
    }
    const hostDir = this.hostPathOf(viewDir);
    for (const [name, group] of listing.groups) {
      if (group.length === 0) {
        if (!listing.aux.has(path.join(hostDir, name))) total.leftOut++;
        continue;
      }
      for (const { name: shownName, entry } of group) {
        if (entry.kind === 'dir') {
          const sub = await this.census(path.posix.join(viewDir, shownName));
          total.shown += sub.shown;
          total.leftOut += sub.leftOut;
        } else if (!entry.snapshot && !entry.partition) total.shown++;
      }
    }
    return total;
  }

  private async readListing(viewDir: string): Promise<Listing> {
    const hostDir = this.hostPathOf(viewDir);
    const at = Date.now();
    const dirSt = fs.statSync(hostDir);
    const dirents = fs.readdirSync(hostDir, { withFileTypes: true });
    const listing: Listing = { at, dirStamp: stampOf(dirSt), groups: new Map(), byName: new Map(), aux: new Set(), stale: new Set() };
    const files: Array<{ name: string; probed: Probed }> = [];
    for (const d of dirents) {
      if (d.isDirectory()) {
        listing.groups.set(d.name, [{ name: d.name, entry: { kind: 'dir', hostPath: path.join(hostDir, d.name) } }]);
      } else if (d.isFile() && this.isCandidateName(d.name)) {
        const probed = await this.probe(path.join(hostDir, d.name));
        if (probed) files.push({ name: d.name, probed });
      }
    }
    // Extent files and external data files belong to another image: never shown on their own.
    for (const f of files) for (const a of f.probed.aux ?? []) listing.aux.add(path.resolve(a));
    for (const f of files) listing.groups.set(f.name, await this.shownOf(hostDir, f.name, f.probed, listing.aux));
    for (const group of listing.groups.values()) for (const s of group) listing.byName.set(s.name, s.entry);
    return listing;
  }

  /** What one image file shows: its disk view, its snapshots' views, and their partitions. */
  private async shownOf(hostDir: string, name: string, probed: Probed, aux: Set<string>): Promise<Shown[]> {
    const hostPath = path.join(hostDir, name);
    if (aux.has(hostPath)) return [];
    if (probed.error || !probed.driver) {
      this.warnOnce(hostPath, probed.key, probed.error ?? 'unknown format');
      return [];
    }
    const out: Shown[] = [];
    const hostFiles = probed.hostFiles ?? [hostPath];
    const driver = probed.driver;
    for (const [snap, virtualSize] of probed.sizes ?? []) {
      const viewName = snap === '' ? name + VIEW_SUFFIX : `${name}${SNAPSHOT_SEPARATOR}${snap}${VIEW_SUFFIX}`;
      const disk: ImageView = { kind: 'image', hostPath, driver, virtualSize, hostFiles, ...(snap === '' ? {} : { snapshot: snap }) };
      out.push({ name: viewName, entry: disk });
      for (const p of (await this.opts.partitionsOf?.(disk, probed.key)) ?? []) {
        out.push({ name: partitionViewName(viewName, VIEW_SUFFIX, p.number), entry: { ...disk, partition: p } });
      }
    }
    return out;
  }

  /** Resolves one mounted path; undefined when it is not shown. */
  async resolve(viewPath: string): Promise<ViewEntry | undefined> {
    if (viewPath === '/') return { kind: 'dir', hostPath: this.root };
    const hostPath = this.hostPathOf(viewPath);
    const name = path.basename(viewPath);
    const dir = path.dirname(viewPath);
    let listing = await this.currentListing(dir);
    // A folder the listing knows needs no lookup; one made since is found by lstat (a symlinked
    // folder is not mirrored, listings skip it too, so it cannot lead outside).
    const known = listing?.byName.get(name);
    if (known?.kind === 'dir') return known;
    if (!known) {
      const st = fs.lstatSync(hostPath, { throwIfNoEntry: false });
      if (st?.isDirectory()) return { kind: 'dir', hostPath };
    }
    if (!viewPath.endsWith(VIEW_SUFFIX) || !listing) return undefined;
    // The image file the name would come from must still show what the listing says it shows
    // (a snapshot taken, a partition table written, a resize since): checked, and redone alone.
    const hit = listing.byName.get(name);
    const hostDir = path.dirname(hostPath);
    const from = hit?.kind === 'image' ? [path.basename(hit.hostPath)] : sourcesOf(name).filter((f) => listing!.groups.has(f));
    for (const file of from) {
      if (await this.groupCurrent(listing, dir, path.join(hostDir, file))) continue;
      listing = await this.currentListing(dir);
      break;
    }
    const found = listing?.byName.get(name);
    if (!found) log('not shown: %s', viewPath);
    return found;
  }

  /**
   * The folder's listing, if it still holds: taken less than LISTING_TTL_MS ago, or the folder
   * has not changed since (its mtime, settled). Otherwise the folder is listed again.
   */
  private async currentListing(viewDir: string): Promise<Listing | undefined> {
    const known = this.listings.get(viewDir);
    const now = Date.now();
    if (known && now - known.at < LISTING_TTL_MS) return known;
    if (known) {
      const st = fs.statSync(this.hostPathOf(viewDir), { throwIfNoEntry: false });
      if (st && stampOf(st) === known.dirStamp && known.at - st.mtimeMs > MTIME_SETTLED_MS) {
        known.at = now;
        return known;
      }
    }
    try {
      await this.list(viewDir);
    } catch {
      this.listings.delete(viewDir);
    }
    return this.listings.get(viewDir);
  }

  /**
   * Is what the listing shows for this image file still what it shows? When the file changed (a
   * snapshot taken, a resize) it is probed again and its entries replaced; false when the folder
   * must be listed again (it claims other files now, or has gone).
   */
  private async groupCurrent(listing: Listing, viewDir: string, hostPath: string): Promise<boolean> {
    const name = path.basename(hostPath);
    const cached = this.probes.get(hostPath);
    const probed = await this.probe(hostPath);
    if (probed === cached && !listing.stale.has(name)) return true;
    if (!probed || !sameList(probed.aux, cached?.aux)) {
      this.listings.delete(viewDir);
      return false;
    }
    listing.stale.delete(name);
    for (const s of listing.groups.get(name) ?? []) listing.byName.delete(s.name);
    const shown = await this.shownOf(path.dirname(hostPath), name, probed, listing.aux);
    listing.groups.set(name, shown);
    for (const s of shown) listing.byName.set(s.name, s.entry);
    return true;
  }

  /** Is this image the backing file or VMDK parent of another image anywhere in the tree? */
  async isBackingOfAnother(hostPath: string): Promise<boolean> {
    const real = (p: string) => {
      try {
        return fs.realpathSync.native(p);
      } catch {
        return path.resolve(p);
      }
    };
    const target = real(hostPath);
    for await (const file of this.walk(this.root)) {
      if (file === path.resolve(hostPath)) continue;
      const p = await this.probe(file);
      // Real paths on both sides: a parent found through the confinement is named by its real
      // path. The name from a header is resolved only through the confinement (reach): it may
      // point anywhere, and a lookup outside the folder may hang on someone's dead mount.
      if (!p?.backing) continue;
      if (path.resolve(p.backing) === target) return true;
      const reached = await this.opts.confinement.reach(file, p.backing, 'backing file').catch(() => undefined);
      if (reached === target) return true;
    }
    return false;
  }

  private async *walk(dir: string): AsyncGenerator<string> {
    let dirents: fs.Dirent[] = [];
    try {
      dirents = fs.readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const d of dirents) {
      const p = path.join(dir, d.name);
      if (d.isDirectory()) yield* this.walk(p);
      else if (d.isFile() && this.isCandidateName(d.name)) yield p;
    }
  }

  private isCandidateName(name: string): boolean {
    const ext = extensionOf(name);
    if (ext === 'img' || ext === 'raw') return this.opts.includeRaw;
    return drivers.some((d) => d.name !== 'raw' && d.extensions.includes(ext));
  }

  /** Probe by content, with the extension agreeing; cached per (mtime, size, inode). */
  private async probe(hostPath: string): Promise<Probed | undefined> {
    const st = fs.statSync(hostPath, { throwIfNoEntry: false });
    this.lastStat = { hostPath, st, at: performance.now() };
    if (!st) return undefined;
    const key = `${st.mtimeMs}:${st.size}:${st.ino}`;
    const cached = this.probes.get(hostPath);
    // A failed probe is retried after a moment: the missing backing or data file may have arrived.
    const fresh = cached && (!cached.error || Date.now() - cached.at < FAILED_PROBE_RETRY_MS);
    if (cached && ((cached.key === key && fresh) || this.opts.isOpen(hostPath))) return cached;
    const probed: Probed = { key, at: Date.now() };
    try {
      const ext = extensionOf(hostPath);
      if (ext === 'img' || ext === 'raw') {
        const head = await readHead(hostPath);
        const d = detectFormat(head, hostPath);
        if (d.name !== 'raw') throw new Error(`content is ${d.name} but the name says .${ext}; refusing to guess`);
        probed.driver = d;
      } else {
        const { driver, head } = await probeImage(hostPath);
        probed.driver = driver;
        const d = (await driver.describe?.(hostPath, head)) ?? {};
        probed.aux = d.auxiliaryFiles ?? [];
        probed.snapshots = d.snapshots ?? [];
        probed.backing = d.backingFile;
      }
      // Open it once (read-only, whole backing chain) so a broken image is left out of the
      // listing instead of failing later, so stat needs no open, and to read its partition
      // table while it is open (no second open for that).
      probed.sizes = new Map();
      for (const snap of ['', ...(probed.snapshots ?? [])]) {
        const img = await openImage(hostPath, {
          writable: false,
          format: probed.driver.name,
          confinement: this.opts.confinement,
          realPath: this.rootIsReal,
          ...(snap ? { snapshot: snap } : {}),
          warn: (m) => log('%s', m),
        });
        try {
          probed.sizes.set(snap, img.virtualSize);
          if (snap === '') probed.hostFiles = img.hostFiles();
          // The parent the open found, under the mount's confinement (VHD locators, a VDI's
          // parent by UUID): drivers that can name it without opening anything say so above.
          if (snap === '' && !probed.backing) probed.backing = img.backingImage?.()?.path;
          const view: ImageView = {
            kind: 'image',
            hostPath,
            driver: probed.driver,
            virtualSize: img.virtualSize,
            hostFiles: probed.hostFiles ?? [hostPath],
            ...(snap ? { snapshot: snap } : {}),
          };
          await this.opts.readPartitions?.(view, img);
        } finally {
          await img.close();
        }
      }
    } catch (e) {
      probed.error = isVdiskError(e) ? e.message.replace(`${hostPath}: `, '') : (e as Error).message;
      probed.driver = undefined;
    }
    this.probes.set(hostPath, probed);
    return probed;
  }

  /** Leaves a file out with one clear log line, and says it again only if the file changes. */
  warnOnce(hostPath: string, key: string, reason: string): void {
    if (this.warned.get(hostPath) === key) return;
    this.warned.set(hostPath, key);
    this.opts.warn(`left out ${path.relative(this.root, hostPath) || hostPath}: ${reason}`);
  }

  /**
   * The stat the lookup that just ran took of this image file (getattr right after resolve:
   * one stat per request, not two), or undefined when it is not that fresh.
   */
  statJustTaken(hostPath: string): fs.Stats | undefined {
    const l = this.lastStat;
    return l && l.hostPath === hostPath && performance.now() - l.at < JUST_TAKEN_MS ? l.st : undefined;
  }

  private lastStat?: { hostPath: string; st: fs.Stats | undefined; at: number };

  /**
   * What this image file shows changed while the mount has it open (its partition table was
   * written): its entries are built again at the next lookup or listing, the rest of its folder kept.
   */
  rebuild(hostPath: string): void {
    for (const [viewDir, listing] of this.listings)
      if (this.hostPathOf(viewDir) === path.dirname(hostPath)) listing.stale.add(path.basename(hostPath));
  }

  /** Forgets what was probed of a file (after we changed its size or content): probed again when next looked up. */
  invalidate(hostPath: string): void {
    this.probes.delete(hostPath);
    this.rebuild(hostPath);
  }
}

function stampOf(st: fs.Stats): string {
  return `${st.mtimeMs}:${st.ino}`;
}

function sameList(a: string[] | undefined, b: string[] | undefined): boolean {
  return (a ?? []).join('\0') === (b ?? []).join('\0');
}

/**
 * The host file names a view name could come from: `a.qcow2.raw`, `a.qcow2.p2.raw` and
 * `a.qcow2@snap.raw` all come from `a.qcow2` (a host name may hold '@' or '.pN' itself, so each
 * reading is a candidate).
 */
function sourcesOf(viewName: string): string[] {
  if (!viewName.endsWith(VIEW_SUFFIX)) return [];
  const base = viewName.slice(0, -VIEW_SUFFIX.length);
  const out = new Set([base, base.replace(/\.p\d+$/, '')]);
  for (const b of [...out])
    for (let i = b.indexOf(SNAPSHOT_SEPARATOR); i > 0; i = b.indexOf(SNAPSHOT_SEPARATOR, i + 1)) out.add(b.slice(0, i));
  return [...out];
}

function entriesOf(listing: Listing): Shown[] {
  const out: Shown[] = [];
  for (const group of listing.groups.values()) out.push(...group);
  return out;
}
