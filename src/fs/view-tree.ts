import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import createDebug from 'debug';
import type { FormatDriver } from '../image';
import { probeImage, readHead, detectFormat, extensionOf, drivers, openImage } from '../image';
import { isVdiskError } from '../io/errors';
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
  partitionsOf?(view: ImageView): Promise<Partition[]>;
}

interface Probed {
  key: string;
  at: number;
  driver?: FormatDriver;
  head?: Buffer;
  error?: string;
  snapshots?: string[];
  aux?: string[];
  backing?: string;
  /** Virtual size per view: '' for the active layer, else the snapshot name. */
  sizes?: Map<string, number>;
  hostFiles?: string[];
}

/**
 * Maps the mounted namespace to host files. Folders are mirrored; files are probed by content
 * (results cached until the file's mtime/size changes), so images added or removed in the
 * folder show up on the next readdir.
 */
export class ViewTree {
  private readonly probes = new Map<string, Probed>();
  /** Last listing per folder: getattr resolves against it for a moment instead of re-reading the folder. */
  private readonly listings = new Map<string, { at: number; entries: Array<{ name: string; entry: ViewEntry }> }>();
  private readonly warned = new Map<string, string>();

  constructor(
    readonly root: string,
    private readonly opts: ViewTreeOptions,
  ) {}

  hostPathOf(viewPath: string): string {
    return path.join(this.root, viewPath);
  }

  /** The entries of a mounted folder, read afresh (readdir must show added and removed images). */
  async list(viewDir: string): Promise<Array<{ name: string; entry: ViewEntry }>> {
    const entries = await this.readListing(viewDir);
    this.listings.set(viewDir, { at: Date.now(), entries });
    return entries;
  }

  private async readListing(viewDir: string): Promise<Array<{ name: string; entry: ViewEntry }>> {
    const hostDir = this.hostPathOf(viewDir);
    const dirents = await fs.readdir(hostDir, { withFileTypes: true });
    const files: Array<{ name: string; probed: Probed }> = [];
    const out: Array<{ name: string; entry: ViewEntry }> = [];
    for (const d of dirents) {
      const hostPath = path.join(hostDir, d.name);
      if (d.isDirectory()) {
        out.push({ name: d.name, entry: { kind: 'dir', hostPath } });
      } else if (d.isFile() && this.isCandidateName(d.name)) {
        const probed = await this.probe(hostPath);
        if (probed) files.push({ name: d.name, probed });
      }
    }
    // Extent files and external data files belong to another image: never shown on their own.
    const aux = new Set<string>();
    for (const f of files) for (const a of f.probed.aux ?? []) aux.add(path.resolve(a));
    for (const f of files) {
      const hostPath = path.join(hostDir, f.name);
      if (aux.has(hostPath)) continue;
      if (f.probed.error || !f.probed.driver) {
        this.warnOnce(hostPath, f.probed.key, f.probed.error ?? 'unknown format');
        continue;
      }
      const hostFiles = f.probed.hostFiles ?? [hostPath];
      const driver = f.probed.driver;
      for (const [snap, virtualSize] of f.probed.sizes ?? []) {
        const name = snap === '' ? f.name + VIEW_SUFFIX : `${f.name}${SNAPSHOT_SEPARATOR}${snap}${VIEW_SUFFIX}`;
        const disk: ImageView = { kind: 'image', hostPath, driver, virtualSize, hostFiles, ...(snap === '' ? {} : { snapshot: snap }) };
        out.push({ name, entry: disk });
        for (const p of (await this.opts.partitionsOf?.(disk)) ?? []) {
          out.push({ name: partitionViewName(name, VIEW_SUFFIX, p.number), entry: { ...disk, partition: p } });
        }
      }
    }
    return out;
  }

  /** Resolves one mounted path; undefined when it is not shown. */
  async resolve(viewPath: string): Promise<ViewEntry | undefined> {
    if (viewPath === '/') return { kind: 'dir', hostPath: this.root };
    const hostPath = this.hostPathOf(viewPath);
    // lstat: a symlinked folder is not mirrored (listings skip it too), so it cannot lead outside.
    const st = await fs.lstat(hostPath).catch(() => undefined);
    if (st?.isDirectory()) return { kind: 'dir', hostPath };
    if (!viewPath.endsWith(VIEW_SUFFIX)) return undefined;
    const base = viewPath.slice(0, -VIEW_SUFFIX.length);
    const name = path.basename(viewPath);
    const dir = path.dirname(viewPath);
    const recent = this.listings.get(dir);
    const entries = recent && Date.now() - recent.at < LISTING_TTL_MS ? recent.entries : await this.list(dir).catch(() => []);
    const hit = entries.find((e) => e.name === name);
    if (hit) return hit.entry;
    log('not shown: %s (%s)', viewPath, base);
    return undefined;
  }

  /** Is this image the backing file or VMDK parent of another image anywhere in the tree? */
  async isBackingOfAnother(hostPath: string): Promise<boolean> {
    const real = (p: string) => fs.realpath(p).catch(() => path.resolve(p));
    const target = await real(hostPath);
    for await (const file of this.walk(this.root)) {
      if (file === path.resolve(hostPath)) continue;
      const p = await this.probe(file);
      // Real paths on both sides: a parent found through the confinement is named by its real path.
      if (p?.backing && (path.resolve(p.backing) === target || (await real(p.backing)) === target)) return true;
    }
    return false;
  }

  private async *walk(dir: string): AsyncGenerator<string> {
    const dirents = await fs.readdir(dir, { withFileTypes: true }).catch(() => []);
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
    const st = await fs.stat(hostPath).catch(() => undefined);
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
        probed.head = head;
      } else {
        const { driver, head } = await probeImage(hostPath);
        probed.driver = driver;
        probed.head = head;
        probed.aux = (await driver.auxiliaryFiles?.(hostPath, head)) ?? [];
        probed.snapshots = (await driver.listSnapshots?.(hostPath)) ?? [];
        probed.backing = await driver.backingFileOf?.(hostPath, head);
      }
      // Open it once (read-only, whole backing chain) so a broken image is left out of the
      // listing instead of failing later, and so stat needs no open.
      probed.sizes = new Map();
      for (const snap of ['', ...(probed.snapshots ?? [])]) {
        const img = await openImage(hostPath, {
          writable: false,
          format: probed.driver.name,
          confinement: this.opts.confinement,
          ...(snap ? { snapshot: snap } : {}),
          warn: (m) => log('%s', m),
        });
        try {
          probed.sizes.set(snap, img.virtualSize);
          if (snap === '') probed.hostFiles = img.hostFiles();
          // The parent the open found, under the mount's confinement (VHD locators, a VDI's
          // parent by UUID): drivers that can name it without opening anything say so above.
          if (snap === '' && !probed.backing) probed.backing = img.backingImage?.()?.path;
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

  /** Forgets the listings (a partition table changed): the next lookup reads the folder again. */
  forgetListings(): void {
    this.listings.clear();
  }

  /** Forgets what was probed of a file (after we changed its size or content). */
  invalidate(hostPath: string): void {
    this.probes.delete(hostPath);
    this.listings.clear();
  }
}
