import type { HostFile } from '../../io/host-file';
import type { Access } from './descriptor';

/**
 * What one extent answers for a guest range that starts inside it (offsets relative to the
 * extent's first guest byte): where the bytes live, and how far that answer holds.
 */
export type ExtentMapping =
  | { kind: 'data'; length: number; hostOffset: number }
  | { kind: 'zero' | 'unallocated'; length: number }
  | { kind: 'compressed'; length: number; hostOffset: number; grainOffset: number };

/**
 * Reads the guest bytes under this extent from the parent disk; `extentOffset` is relative to
 * the extent. Used for COW of partial grains; null when there is no parent (COW from zeros).
 * Made by extent-chain.ts over the shared data path's backing read.
 */
export type CowSource = (extentOffset: number, into: Buffer) => Promise<void>;

export interface VmdkExtent {
  readonly type: string; // SPARSE, FLAT, ZERO, VMFS ... as the descriptor says
  readonly access: Access;
  readonly size: number; // guest bytes
  readonly file?: HostFile;
  readonly fileName?: string; // as named in the descriptor
  readonly grainBytes?: number; // sparse extents only
  /** The mapping of the first bytes of [offset, offset+length), with how far it holds. */
  map(offset: number, length: number): Promise<ExtentMapping>;
  /** The same answer when it needs no I/O; undefined: ask map(). */
  mapSync?(offset: number, length: number): ExtentMapping | undefined;
  /**
   * map() for a report of the whole disk (Image.map: `vdiskfs map`, SEEK_DATA): a table not
   * cached is read into a scratch buffer instead of the cache, so walking 2 TiB of tables
   * neither evicts what the data path uses nor churns memory. Absent: map().
   */
  mapForReport?(offset: number, length: number): Promise<ExtentMapping>;
  /** The whole grain of a 'compressed' mapping, inflated (streamOptimized). */
  inflate?(hostOffset: number, grainOffset: number): Promise<Buffer>;
  /** Writes `data` (total `length` bytes) at `offset`; allocation, COW and metadata are the extent's job. */
  write(offset: number, data: Buffer[], length: number, cow: CowSource | null): Promise<void>;
  /**
   * write() done synchronously when nothing needs loading, copying or waiting (Image.writeSync);
   * `hasParent`: unallocated ranges read from a parent image. False: nothing done.
   */
  writeSync?(offset: number, data: Buffer, hasParent: boolean): boolean;
  /** Zeroes a range: zeroed-grain entries where the extent can, zeros written otherwise. */
  writeZeroes(offset: number, length: number, cow: CowSource | null, hasParent: boolean): Promise<void>;
  flush(): Promise<void>;
  close(): Promise<void>;
  counters(): Record<string, number>;
}

/** The part of a vector of buffers that covers bytes [start, start+length) (no copies). */
export function sliceVector(data: Buffer[], start: number, length: number): Buffer[] {
  const out: Buffer[] = [];
  let pos = 0;
  const end = start + length;
  for (const b of data) {
    const bEnd = pos + b.length;
    if (bEnd > start && pos < end) out.push(b.subarray(Math.max(0, start - pos), Math.min(b.length, end - pos)));
    pos = bEnd;
    if (pos >= end) break;
  }
  return out;
}
