/**
 * The one data path of every driver (imago's FormatAccess split). A driver answers the mapping
 * question — "where do the first bytes of this guest range live, and how far does that answer
 * hold?" — and `readThrough` moves the bytes: host reads (all issued before any is awaited, so
 * they run together), zeros, the backing image (`readBacking`: what it has, zeros past its end)
 * and compressed units (inflated by the driver, sliced here). The COW source of a partial
 * cluster/grain is a read through the same functions. `checkRange` is the one range check.
 *
 * Allocation stays in the drivers (qcow2/write-path.ts, vmdk/grain-allocator.ts).
 */
import { SYNC_CACHED_READ_MAX, type HostFile } from '../io/host-file';
import { VdiskError } from '../io/errors';
import type { Image } from './types';

/** The range reads as unallocated here: from the backing image, zeros past its end or without one. */
export const UNALLOCATED = 0;
/** The range reads as zeros. */
export const ZERO = 1;
/** The bytes are in `file` at `host`, uncompressed. */
export const DATA = 2;
/** The range lies in one compressed unit (cluster, grain) that `inflater` inflates. */
export const COMPRESSED = 3;

/** Inflates one compressed unit (a driver keeps a few: small reads walk one unit many times). */
export interface Inflater {
  /** The whole unit, inflated; `host`, `size` and `unit` as the mapping gave them. */
  inflate(host: number, size: number, unit: number): Promise<Buffer>;
}

/**
 * One mapping answer. The loop owns one of these per request and the driver fills it, so a
 * piece costs no allocation; fields a kind does not use keep whatever they held.
 */
export interface Mapping {
  kind: number; // UNALLOCATED | ZERO | DATA | COMPRESSED
  length: number; // bytes from the asked offset that this answer holds for (> 0)
  /** DATA: the file to read; COMPRESSED: the file holding the compressed bytes (for map reports). */
  file: Pick<HostFile, 'read' | 'readSync' | 'path'> | undefined;
  host: number; // DATA: host offset of the asked byte; COMPRESSED: host offset of the unit
  size: number; // COMPRESSED: bytes stored (0 when the format frames them itself)
  unit: number; // COMPRESSED: guest offset where the unit starts
  inflater: Inflater | undefined; // COMPRESSED
}

export function newMapping(): Mapping {
  return { kind: ZERO, length: 0, file: undefined, host: 0, size: 0, unit: 0, inflater: undefined };
}

/** What a driver implements for reads (and its COW reads). Offsets are guest bytes. */
export interface FormatAccess {
  /** The image unallocated ranges read from; undefined: they read as zeros. */
  readonly backing: Image | undefined;
  /**
   * Answers for the first bytes of [offset, offset+length) into `out` and returns true when it
   * can without I/O (tables cached); false: ask `map`.
   */
  mapSync(offset: number, length: number, out: Mapping): boolean;
  /** The same answer, loading what it needs. */
  map(offset: number, length: number, out: Mapping): Promise<void>;
}

/** EINVAL unless [offset, offset+length) lies within the image (one line, as every driver says it). */
export function checkRange(image: { readonly path: string; readonly virtualSize: number }, offset: number, length: number): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > image.virtualSize) {
    throw VdiskError.invalid(`range ${offset}+${length} past the end of ${image.path} (${image.virtualSize} bytes)`);
  }
}

/** Guest bytes [guest, guest+into.length) of the backing image: what it has, zeros past its end. */
export async function readBacking(backing: Image | undefined, guest: number, into: Buffer): Promise<void> {
  const n = backing ? Math.max(0, Math.min(into.length, backing.virtualSize - guest)) : 0;
  if (n > 0) await backing!.read(guest, n === into.length ? into : into.subarray(0, n));
  if (n < into.length) into.fill(0, n);
}

async function readCompressed(inflater: Inflater, host: number, size: number, unit: number, guest: number, into: Buffer): Promise<void> {
  const whole = await inflater.inflate(host, size, unit);
  const from = guest - unit;
  if (from < 0 || from + into.length > whole.length)
    throw VdiskError.corrupt(`compressed unit at ${host} holds ${whole.length} bytes from guest ${unit}, not ${guest}+${into.length}`);
  whole.copy(into, 0, from, from + into.length);
}

function ignore(): void {}

/**
 * Fills `into` with guest bytes [offset, offset+into.length) as `a` maps them. The caller has
 * checked the range. Host I/O of every piece is issued before any is awaited; when one fails,
 * the others are waited for before the error is thrown (no read lands in `into` afterwards).
 */
export async function readThrough(a: FormatAccess, offset: number, into: Buffer): Promise<void> {
  const total = into.length;
  const m = newMapping();
  // Most requests have one piece: keep it out of an array.
  let first: Promise<unknown> | undefined;
  let rest: Promise<unknown>[] | undefined;
  let pos = 0;
  try {
    while (pos < total) {
      const at = offset + pos;
      const want = total - pos;
      if (!a.mapSync(at, want, m)) {
        // A piece issued before may fail while we wait: it is awaited below, not unhandled.
        if (first) first.catch(ignore);
        if (rest) for (const p of rest) p.catch(ignore);
        await a.map(at, want, m);
      }
      const n = m.length;
      if (!(n > 0 && n <= want)) throw VdiskError.io(`mapping of ${at}+${want} answered ${n} bytes`);
      const dst = n === total ? into : into.subarray(pos, pos + n);
      let p: Promise<unknown> | undefined;
      switch (m.kind) {
        case DATA:
          p = m.file!.read(dst, m.host, 'data');
          break;
        case ZERO:
          dst.fill(0);
          break;
        case UNALLOCATED:
          p = readBacking(a.backing, at, dst);
          break;
        case COMPRESSED:
          p = readCompressed(m.inflater!, m.host, m.size, m.unit, at, dst);
          break;
        default:
          throw VdiskError.io(`mapping of ${at}+${want} answered kind ${m.kind}`);
      }
      if (p) {
        if (!first) first = p;
        else (rest ??= []).push(p);
      }
      pos += n;
    }
  } catch (e) {
    await Promise.allSettled(rest ? [first!, ...rest] : first ? [first] : []);
    throw e;
  }
  if (rest) {
    rest.unshift(first!);
    const settled = await Promise.allSettled(rest); // the first failed piece in guest order is reported
    for (const r of settled) if (r.status === 'rejected') throw r.reason;
  } else if (first) {
    await first;
  }
}

/**
 * readThrough done synchronously, for the transport's fast path (a FUSE read answered inside its
 * dispatch, no promise turns): only when every piece is mapped without I/O, is data, zeros or
 * unallocated without a backing image, and the host file can read the data pieces at once
 * (HostFile.readSync: small ones always, up to SYNC_CACHED_READ_MAX from the page cache).
 * Otherwise false: the caller uses readThrough, which fills all of `into` again. Two passes over
 * the (cached) mapping, so declining for the mapping costs no host I/O; declining because a
 * large read is not all cached may follow a copy of the cached part.
 */
export function readThroughSync(a: FormatAccess, offset: number, into: Buffer): boolean {
  const total = into.length;
  const m = newMapping();
  let bytes = 0;
  for (let pos = 0; pos < total; pos += m.length) {
    if (!a.mapSync(offset + pos, total - pos, m) || !(m.length > 0 && m.length <= total - pos)) return false;
    if (m.kind === DATA) bytes += m.length;
    else if (m.kind === COMPRESSED || (m.kind === UNALLOCATED && a.backing !== undefined)) return false;
    else if (m.kind !== ZERO && m.kind !== UNALLOCATED) return false;
  }
  if (bytes > SYNC_CACHED_READ_MAX) return false;
  for (let pos = 0; pos < total; pos += m.length) {
    a.mapSync(offset + pos, total - pos, m);
    const dst = m.length === total ? into : into.subarray(pos, pos + m.length);
    if (m.kind !== DATA) dst.fill(0);
    else if (!m.file!.readSync(dst, m.host, 'data')) return false;
  }
  return true;
}
