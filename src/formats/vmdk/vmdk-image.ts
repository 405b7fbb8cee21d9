import * as path from 'node:path';
import { randomInt } from 'node:crypto';
import createDebug from 'debug';
import { HostFile } from '../../io/host-file';
import { allEnded, InFlight } from '../../io/settle';
import { VdiskError } from '../../io/errors';
import { checkRange, readThrough, readThroughSync } from '../data-path';
import type { Extent, Image, ImageInfo, ImageStats, OpenOptions } from '../types';
import { formatCid, type Descriptor } from './descriptor';
import { sliceVector, type VmdkExtent } from './extent';
import { ExtentChain } from './extent-chain';
import { FlatExtent, ZeroExtent } from './flat-extent';
import { readLayout, type Layout } from './layout';
import { SparseExtent } from './sparse-extent';
import { SeSparseExtent } from './se-sparse-extent';
import * as hdr from './sparse-header';
import { vmdkInfo } from './vmdk-info';

/** Extent lines a descriptor may have (each opens a file). */
export const MAX_EXTENTS = 4096;

const log = createDebug('vdiskfs:vmdk');

/** Grain tables kept per extent by default (64 MiB covers a 1 TiB disk of 64 KiB grains). */
const DEFAULT_GT_CACHE_BYTES = 64 << 20;

/**
 * A VMDK disk: a descriptor, one or more extents laid end to end in guest space, maybe a
 * parent. Requests are split at extent boundaries (extent-chain.ts); each extent maps and
 * allocates its own part; reads go through the shared data path (../data-path.ts).
 */
export class VmdkImage implements Image {
  readonly format = 'vmdk';
  virtualSize: number;
  readOnly: boolean;
  private readonly chain: ExtentChain;
  private cidUpdate: Promise<void> | undefined;
  /** The first write's new CID is written: later writes need not wait for it (writeSync). */
  private cidWritten = false;
  private closed = false;
  /** Requests running (close waits for them). */
  private readonly inFlight = new InFlight();

  private constructor(
    readonly path: string,
    private readonly layout: Layout,
    private readonly extents: VmdkExtent[],
    private readonly descriptorFile: HostFile | undefined,
    private readonly embeddedIn: HostFile | undefined,
    readonly parent: Image | undefined,
    readonly parentFile: string | undefined,
    readOnly: boolean,
  ) {
    this.chain = new ExtentChain(path, extents, parent);
    this.virtualSize = extents.reduce((n, e) => n + e.size, 0);
    this.readOnly = readOnly;
  }

  /** The hosted sparse extents (for check). */
  sparseExtents(): SparseExtent[] {
    return this.extents.filter((e): e is SparseExtent => e instanceof SparseExtent);
  }

  get descriptor(): Descriptor | null {
    return this.layout.descriptor;
  }

  /** Content ID: changes on the first write after open, so children can tell. */
  get cid(): number | undefined {
    return this.layout.descriptor?.cid;
  }

  static async open(file: string, opts: OpenOptions): Promise<VmdkImage> {
    const layout = await readLayout(file);
    const desc = layout.descriptor;
    const warn = opts.warn;
    let readOnly = !opts.writable;
    const extents: VmdkExtent[] = [];
    const cacheBytes = opts.tuning?.vmdk?.tableCacheBytes ?? DEFAULT_GT_CACHE_BYTES;
    const noMultiAlloc = !!opts.tuning?.vmdk?.noMultiAlloc;
    let descriptorFile: HostFile | undefined;
    let embeddedIn: HostFile | undefined;
    try {
      if (layout.embedded) {
        // qemu-img refuses these too: a bare extent (another disk's -s001 file) or a wiped descriptor.
        if (!desc) throw VdiskError.corrupt(`${file}: sparse extent without an embedded descriptor (not a disk of its own)`);
        // monolithicSparse / streamOptimized: the extent is this very file, whatever name the
        // descriptor gives (QEMU does the same; dfvfs/ext2-2020.vmdk names another file).
        const line = desc?.extents[0];
        const access = line?.access ?? 'RW';
        const f = await HostFile.open(file, opts.writable && access === 'RW');
        embeddedIn = f;
        const capacity = layout.header!.capacity * hdr.SECTOR;
        const ext = await SparseExtent.open(f, {
          access,
          size: capacity,
          fileName: path.basename(file),
          writable: f.writable,
          noMultiAlloc,
          cacheBytes,
          warn,
        });
        extents.push(ext);
      } else {
        const d = desc!;
        // Each extent holds a file open: a descriptor of tens of thousands of lines (1 MiB of
        // text) would take every descriptor the daemon has, and fail every other image meanwhile.
        if (d.extents.length > MAX_EXTENTS)
          throw VdiskError.corrupt(`${file}: ${d.extents.length} extents; vdiskfs opens at most ${MAX_EXTENTS} (8 TiB of 2 GB extents)`);
        for (const line of d.extents) {
          const size = line.sectors * hdr.SECTOR;
          if (line.type === 'ZERO') {
            extents.push(new ZeroExtent(line.access, size));
            continue;
          }
          if (!line.fileName) throw VdiskError.corrupt(`${file}: ${line.type} extent without a file name`);
          const p = await opts.reach(line.fileName, `${line.type} extent`);
          const wantWrite = opts.writable && line.access === 'RW';
          if (line.type === 'FLAT' || line.type === 'VMFS') {
            extents.push(
              new FlatExtent(line.type, line.access, size, await HostFile.open(p, wantWrite), line.fileName, line.offsetSectors),
            );
          } else if (line.type === 'SPARSE' || line.type === 'VMFSSPARSE') {
            const f = await HostFile.open(p, wantWrite);
            extents.push(await openSparseFile(f, line.fileName, line.access, size, wantWrite, noMultiAlloc, cacheBytes, warn));
          } else if (line.type === 'SESPARSE') {
            const f = await HostFile.open(p, false);
            try {
              extents.push(await SeSparseExtent.open(f, line.access, size, line.fileName, opts.writable, warn));
            } catch (e) {
              await f.close().catch(() => {});
              throw e;
            }
          } else {
            throw VdiskError.unsupported(`${file}: extent type ${line.type} (${line.fileName}) is not supported`);
          }
        }
        if (opts.writable) descriptorFile = await HostFile.open(file, true);
      }
      if (extents.length === 0) throw VdiskError.corrupt(`${file}: no extents`);
      for (const e of extents) {
        if (e.access !== 'RW' && !readOnly) {
          warn(`${file}: extent ${e.fileName ?? e.type} is ${e.access}; opened read-only`);
          readOnly = true;
        }
        if (((e instanceof SparseExtent && e.readOnly) || e instanceof SeSparseExtent) && !readOnly) readOnly = true;
      }

      let parent: Image | undefined;
      const hint = layout.descriptor?.parentFileNameHint;
      const parentFile = hint ? await opts.reach(hint, 'parent (parentFileNameHint)') : undefined;
      if (parentFile && desc && desc.parentCid !== 0xffffffff) {
        parent = await opts.openBacking(parentFile);
        const pcid = (parent as Partial<VmdkImage>).cid;
        if (typeof pcid === 'number' && pcid !== desc.parentCid) {
          warn(
            `${file}: parentCID ${formatCid(desc.parentCid)} does not match ${parentFile}'s CID ${formatCid(pcid)} (the parent changed since this child was made); opened read-only`,
          );
          readOnly = true;
        }
      } else if (parentFile) {
        parent = await opts.openBacking(parentFile);
      }
      log(
        'open %s: %d extents, %d bytes, parent %s, %s',
        file,
        extents.length,
        extents.reduce((n, e) => n + e.size, 0),
        parentFile ?? '-',
        readOnly ? 'ro' : 'rw',
      );
      return new VmdkImage(file, layout, extents, descriptorFile, embeddedIn, parent, parentFile, readOnly);
    } catch (e) {
      await Promise.allSettled([...extents.map((x) => x.close()), descriptorFile?.close()]);
      if (embeddedIn && extents.length === 0) await embeddedIn.close().catch(() => {});
      throw e;
    }
  }

  async read(offset: number, into: Buffer): Promise<void> {
    checkRange(this, offset, into.length);
    await readThrough(this.chain, offset, into);
  }

  /** read() without waiting, when the grain tables are cached (data-path.ts readThroughSync); false: nothing done. */
  readSync(offset: number, into: Buffer): boolean {
    checkRange(this, offset, into.length);
    return readThroughSync(this.chain, offset, into);
  }

  write(offset: number, data: Buffer | Buffer[]): Promise<void> {
    return this.inFlight.track(this.writeNow(offset, data));
  }

  private async writeNow(offset: number, data: Buffer | Buffer[]): Promise<void> {
    const bufs = Array.isArray(data) ? data : [data];
    let length = 0;
    for (const b of bufs) length += b.length;
    if (this.readOnly) throw VdiskError.readOnly(`${this.path} is read-only`);
    checkRange(this, offset, length);
    if (length === 0) return;
    await this.touchCid();
    await allEnded(
      this.chain.pieces(offset, length).map((p) => p.ext.write(p.eo, sliceVector(bufs, p.pos, p.n), p.n, this.chain.cowFor(p.start))),
    );
  }

  /**
   * write() without waiting: the new CID already written, one extent, its grain tables cached and
   * every grain allocated or new with nothing to copy into it (grain-allocator.ts
   * writeGrainsSync), or a flat extent; false: nothing done.
   */
  writeSync(offset: number, data: Buffer): boolean {
    if (this.readOnly) throw VdiskError.readOnly(`${this.path} is read-only`);
    checkRange(this, offset, data.length);
    if (!this.cidWritten || data.length === 0) return false;
    const pieces = this.chain.pieces(offset, data.length);
    if (pieces.length !== 1) return false;
    const p = pieces[0]!;
    return p.ext.writeSync?.(p.eo, data, this.parent !== undefined) ?? false;
  }

  writeZeroes(offset: number, length: number): Promise<void> {
    return this.inFlight.track(this.writeZeroesNow(offset, length));
  }

  private async writeZeroesNow(offset: number, length: number): Promise<void> {
    if (this.readOnly) throw VdiskError.readOnly(`${this.path} is read-only`);
    checkRange(this, offset, length);
    if (length === 0) return;
    await this.touchCid();
    await allEnded(
      this.chain.pieces(offset, length).map((p) => p.ext.writeZeroes(p.eo, p.n, this.chain.cowFor(p.start), this.parent !== undefined)),
    );
  }

  /**
   * Sparse extents: zeroed-grain entries where the header allows them, zeros written only over
   * grains that hold data (or would show the parent); FLAT extents: the host range punched.
   * A streamOptimized (compressed) extent is append-only: EROFS.
   */
  discard(offset: number, length: number): Promise<void> {
    return this.inFlight.track(this.discardNow(offset, length));
  }

  private async discardNow(offset: number, length: number): Promise<void> {
    if (this.readOnly) throw VdiskError.readOnly(`${this.path} is read-only`);
    checkRange(this, offset, length);
    if (length === 0) return;
    const parts = this.chain.pieces(offset, length);
    for (const p of parts) {
      if (p.ext instanceof SparseExtent && p.ext.compressed)
        throw VdiskError.readOnly(`${this.path}: a streamOptimized extent cannot be discarded`);
    }
    await this.touchCid();
    await allEnded(
      parts.map(async (p) => {
        if (p.ext instanceof FlatExtent && !this.parent && p.ext.access === 'RW') {
          const m = await p.ext.map(p.eo, p.n);
          if (p.ext.file.punchHole(m.kind === 'data' ? m.hostOffset : 0, p.n, 'data')) return;
        }
        await p.ext.writeZeroes(p.eo, p.n, this.chain.cowFor(p.start), this.parent !== undefined);
      }),
    );
  }

  backingImage(): Image | undefined {
    return this.parent;
  }

  /**
   * The first write after open gives the image a new CID (as QEMU does), so children see it
   * changed. A failed update is tried again by the next write (a passing ENOSPC must not leave
   * the image unwritable until a remount).
   */
  private touchCid(): Promise<void> {
    return (this.cidUpdate ??= this.writeNewCid().then(
      () => {
        this.cidWritten = true;
      },
      (e: unknown) => {
        this.cidUpdate = undefined;
        throw e;
      },
    ));
  }

  private async writeNewCid(): Promise<void> {
    const d = this.layout.descriptor;
    if (!d) return;
    let cid = randomInt(0, 0xffffffff);
    if (cid === d.cid) cid = (cid + 1) >>> 0;
    d.set('CID', formatCid(cid));
    await this.writeDescriptor();
    log('%s: new CID %s', this.path, formatCid(cid));
  }

  /** The descriptor as it is now, in its room inside the extent file or as its own file. */
  private async writeDescriptor(): Promise<void> {
    const d = this.layout.descriptor!;
    const text = Buffer.from(d.toString(), 'latin1');
    if (this.layout.embedded) {
      if (text.length > this.layout.descriptorRoom)
        throw VdiskError.noSpace(`${this.path}: descriptor no longer fits its ${this.layout.descriptorRoom} bytes`);
      const room = Buffer.alloc(this.layout.descriptorRoom);
      text.copy(room);
      await this.embeddedIn!.write(room, this.layout.descriptorAt, 'descriptor');
    } else if (this.descriptorFile) {
      await this.descriptorFile.write(text, 0, 'descriptor');
      await this.descriptorFile.truncate(text.length);
    }
  }

  /**
   * Grows a monolithicSparse disk within its grain directory (no new grain-table slots needed;
   * QEMU sizes the directory by whole tables): the header's capacity, then the descriptor's extent
   * line. Anything else (split, flat, streamOptimized, past the directory): ENOSPC.
   */
  async resize(newSize: number): Promise<void> {
    if (this.readOnly) throw VdiskError.readOnly(`${this.path} is read-only`);
    if (!Number.isSafeInteger(newSize) || newSize < this.virtualSize)
      throw VdiskError.invalid(`${this.path}: shrinking a VMDK is not supported`);
    if (newSize === this.virtualSize) return;
    const ext = this.extents[0];
    const d = this.layout.descriptor;
    if (!this.layout.embedded || !d || this.extents.length !== 1 || !(ext instanceof SparseExtent) || ext.compressed) {
      throw VdiskError.noSpace(`${this.path}: only a monolithicSparse VMDK can grow`);
    }
    const size = Math.ceil(newSize / hdr.SECTOR) * hdr.SECTOR;
    if (size > ext.room)
      throw VdiskError.noSpace(`${this.path}: its grain directory reaches ${ext.room} bytes; growing to ${size} needs a bigger one`);
    await this.flush();
    await ext.growCapacity(size); // header first: a crash in between leaves capacity >= the descriptor's size, which opens
    d.setExtentSectors(0, size / hdr.SECTOR);
    await this.writeDescriptor();
    await this.embeddedIn!.datasync('descriptor');
    this.virtualSize = size;
  }

  async flush(): Promise<void> {
    if (this.readOnly) return;
    // Every extent's flush ends before this does, also when one fails: close then closes their files.
    await allEnded(this.extents.map((e) => e.flush()));
    if (this.descriptorFile && this.cidUpdate) await this.descriptorFile.datasync('descriptor');
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.inFlight.drained();
      await this.flush();
    } finally {
      await Promise.allSettled([...this.extents.map((e) => e.close()), this.descriptorFile?.close()]);
      if (this.parent) await this.parent.close();
    }
  }

  async map(offset: number, length: number): Promise<Extent[]> {
    checkRange(this, offset, length);
    return this.chain.report(offset, length);
  }

  hostFiles(): string[] {
    const files = new Set<string>([this.path]);
    for (const e of this.extents) if (e.file) files.add(e.file.path);
    return [...files];
  }

  stats(): ImageStats {
    const io: ImageStats['io'] = {};
    const driver: Record<string, number> = {};
    for (const e of this.extents) {
      if (e.file) io[e.file.path] = { ...e.file.counters };
      for (const [k, v] of Object.entries(e.counters())) driver[k] = (driver[k] ?? 0) + v;
    }
    if (this.descriptorFile) io[this.descriptorFile.path] = { ...this.descriptorFile.counters };
    return { io, driver };
  }

  info(): Promise<ImageInfo> {
    return vmdkInfo({
      path: this.path,
      virtualSize: this.virtualSize,
      hostFiles: this.hostFiles(),
      layout: this.layout,
      extents: this.extents,
      parentFile: this.parentFile,
      parent: this.parent,
    });
  }
}

async function openSparseFile(
  f: HostFile,
  fileName: string,
  access: VmdkExtent['access'],
  size: number,
  writable: boolean,
  noMultiAlloc: boolean,
  cacheBytes: number,
  warn: (m: string) => void,
): Promise<VmdkExtent> {
  try {
    return await SparseExtent.open(f, { access, size, fileName, writable, noMultiAlloc, cacheBytes, warn });
  } catch (e) {
    await f.close().catch(() => {});
    throw e;
  }
}
