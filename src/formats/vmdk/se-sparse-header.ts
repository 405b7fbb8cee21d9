import { VdiskError } from '../../io/errors';
import { toSafeNumber } from '../../io/safe-int';

/**
 * ESXi seSparse ("space-efficient sparse") extent headers. Not officially documented; the
 * layout and the strict checks follow what QEMU accepts (block/vmdk.c): a 512-byte const
 * header at sector 0 and a volatile header whose journal must not need replaying.
 */
export const SIZE = 512;
export const CONST_MAGIC = 0xcafebaben;
export const VOLATILE_MAGIC = 0xcafecafen;
export const VERSION = 0x0000000200000001n;

export interface SeSparseHeader {
  capacity: number; // sectors
  grainSize: number; // sectors per grain (8)
  grainTableSize: number; // sectors per grain table (64 → 4096 u64 entries)
  volatileHeaderOffset: number; // sectors
  grainDirOffset: number; // sectors
  grainDirSize: number; // sectors
  grainTablesOffset: number; // sectors: grain table i is at grainTablesOffset + i * grainTableSize
  grainsOffset: number; // sectors: grain i is at grainsOffset + i * grainSize
}

export function isSeSparse(head: Buffer): boolean {
  return head.length >= 16 && head.readBigUInt64LE(0) === CONST_MAGIC;
}

export function parse(b: Buffer): SeSparseHeader {
  if (b.length < SIZE || b.readBigUInt64LE(0) !== CONST_MAGIC) throw VdiskError.corrupt('seSparse: bad const header magic');
  const version = b.readBigUInt64LE(8);
  if (version !== VERSION) throw VdiskError.unsupported(`seSparse: unsupported version 0x${version.toString(16)}`);
  const u = (off: number, name: string) => toSafeNumber(b.readBigUInt64LE(off), `seSparse ${name}`);
  const h: SeSparseHeader = {
    capacity: u(16, 'capacity'),
    grainSize: u(24, 'grain_size'),
    grainTableSize: u(32, 'grain_table_size'),
    volatileHeaderOffset: u(80, 'volatile_header_offset'),
    grainDirOffset: u(128, 'grain_dir_offset'),
    grainDirSize: u(136, 'grain_dir_size'),
    grainTablesOffset: u(144, 'grain_tables_offset'),
    grainsOffset: u(192, 'grains_offset'),
  };
  if (h.grainSize !== 8) throw VdiskError.unsupported(`seSparse: unsupported grain size ${h.grainSize}`);
  if (h.grainTableSize !== 64) throw VdiskError.unsupported(`seSparse: unsupported grain table size ${h.grainTableSize}`);
  if (b.readBigUInt64LE(40) !== 0n) throw VdiskError.unsupported('seSparse: unsupported flags');
  return h;
}

/** The volatile header: a journal that needs replaying means the extent is dirty. */
export function checkVolatile(b: Buffer): void {
  if (b.readBigUInt64LE(0) !== VOLATILE_MAGIC) throw VdiskError.corrupt('seSparse: bad volatile header magic');
  if (b.readBigUInt64LE(24) !== 0n) throw VdiskError.unsupported('seSparse: extent is dirty (journal replay needed)');
}
