/**
 * A VMDK disk's extents laid end to end in guest space, as the shared data path sees them
 * (../data-path.ts): each mapping question goes to the extent holding the offset (an answer
 * never crosses an extent's end), unallocated grains read from the parent, compressed grains
 * are inflated by their extent. Also splits requests at extent boundaries and makes each
 * extent's COW source (the parent's bytes, through the shared backing read).
 */
import { VdiskError } from '../../io/errors';
import { COMPRESSED, DATA, type FormatAccess, type Inflater, type Mapping, newMapping, readBacking, UNALLOCATED, ZERO } from '../data-path';
import type { Extent, Image } from '../types';
import type { CowSource, ExtentMapping, VmdkExtent } from './extent';

/** The part of a request inside one extent: extent `ext` starting at guest `start`, extent offset `eo`, request offset `pos`, `n` bytes. */
export interface ExtentPiece {
  ext: VmdkExtent;
  start: number;
  eo: number;
  pos: number;
  n: number;
}

export class ExtentChain implements FormatAccess {
  private readonly starts: number[] = [];
  private readonly inflaters: Array<Inflater | undefined>;

  constructor(
    private readonly path: string,
    private readonly extents: VmdkExtent[],
    readonly backing: Image | undefined,
  ) {
    let pos = 0;
    for (const e of extents) {
      this.starts.push(pos);
      pos += e.size;
    }
    // The data path names a compressed grain by its guest offset; the extent by its own.
    this.inflaters = extents.map((e, i) =>
      e.inflate ? { inflate: (host: number, _size: number, unit: number) => e.inflate!(host, unit - this.starts[i]!) } : undefined,
    );
  }

  /** Index of the extent holding guest byte `offset`. */
  private extentAt(offset: number): number {
    let lo = 0;
    let hi = this.extents.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.starts[mid]! <= offset) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  /** The extent-local pieces of [offset, offset+length). */
  pieces(offset: number, length: number): ExtentPiece[] {
    const out: ExtentPiece[] = [];
    let pos = 0;
    let i = this.extentAt(offset);
    while (pos < length) {
      const ext = this.extents[i]!;
      const eo = offset + pos - this.starts[i]!;
      const n = Math.min(length - pos, ext.size - eo);
      if (n > 0) out.push({ ext, start: this.starts[i]!, eo, pos, n });
      pos += Math.max(n, 0);
      i++;
    }
    return out;
  }

  /** COW source of the extent starting at guest `start`: the parent's bytes (null without a parent: zeros). */
  cowFor(start: number): CowSource | null {
    const parent = this.backing;
    if (!parent) return null;
    return (eo, into) => readBacking(parent, start + eo, into);
  }

  mapSync(offset: number, length: number, out: Mapping): boolean {
    const i = this.extentAt(offset);
    const ext = this.readable(i);
    const eo = offset - this.starts[i]!;
    const m = ext.mapSync?.(eo, Math.min(length, ext.size - eo));
    if (!m) return false;
    this.answer(i, m, out);
    return true;
  }

  async map(offset: number, length: number, out: Mapping): Promise<void> {
    const i = this.extentAt(offset);
    const ext = this.readable(i);
    const eo = offset - this.starts[i]!;
    this.answer(i, await ext.map(eo, Math.min(length, ext.size - eo)), out);
  }

  /** Image.map's report of [offset, offset+length), adjacent answers of one kind merged. */
  async report(offset: number, length: number): Promise<Extent[]> {
    const out: Extent[] = [];
    // Merged before anything is allocated: a fully allocated 2 TiB extent answers grain by
    // grain, 32 Mi answers that mostly extend the last extent.
    const push = (pos: number, len: number, kind: Extent['kind'], compressed: boolean, hostFile?: string, hostOffset?: number) => {
      const last = out[out.length - 1];
      if (
        last &&
        last.kind === kind &&
        last.offset + last.length === pos &&
        (last.compressed ?? false) === compressed &&
        last.hostFile === hostFile &&
        (kind !== 'data' || compressed || (last.hostOffset !== undefined && hostOffset === last.hostOffset + last.length))
      ) {
        last.length += len;
        return;
      }
      const x: Extent = { offset: pos, length: len, kind };
      if (compressed) x.compressed = true;
      if (hostFile !== undefined) x.hostFile = hostFile;
      if (hostOffset !== undefined) x.hostOffset = hostOffset;
      out.push(x);
    };
    const m = newMapping();
    for (let pos = offset; pos < offset + length; pos += m.length) {
      const i = this.extentAt(pos);
      const ext = this.extents[i]!;
      const eo = pos - this.starts[i]!;
      const n = Math.min(offset + length - pos, ext.size - eo);
      this.answer(i, ext.mapSync?.(eo, n) ?? (await (ext.mapForReport ?? ext.map).call(ext, eo, n)), m);
      if (!(m.length > 0 && m.length <= n)) throw VdiskError.io(`${this.path}: mapping of ${pos}+${n} answered ${m.length} bytes`);
      if (m.kind === DATA) push(pos, m.length, 'data', false, m.file!.path, m.host);
      else if (m.kind === COMPRESSED) push(pos, m.length, 'data', true, m.file!.path);
      else if (m.kind === UNALLOCATED) push(pos, m.length, this.backing ? 'backing' : 'unallocated', false);
      else push(pos, m.length, 'zero', false);
    }
    return out;
  }

  private readable(i: number): VmdkExtent {
    const ext = this.extents[i]!;
    if (ext.access === 'NOACCESS') throw VdiskError.io(`${this.path}: extent ${ext.fileName ?? ext.type} is NOACCESS`);
    return ext;
  }

  /** An extent's answer in the data path's terms (guest offsets). */
  private answer(i: number, m: ExtentMapping, out: Mapping): void {
    out.length = m.length;
    switch (m.kind) {
      case 'data':
        out.kind = DATA;
        out.file = this.extents[i]!.file;
        out.host = m.hostOffset;
        break;
      case 'compressed':
        out.kind = COMPRESSED;
        out.file = this.extents[i]!.file;
        out.host = m.hostOffset;
        out.size = 0;
        out.unit = this.starts[i]! + m.grainOffset;
        out.inflater = this.inflaters[i];
        break;
      case 'zero':
        out.kind = ZERO;
        break;
      default:
        out.kind = UNALLOCATED;
    }
  }
}
