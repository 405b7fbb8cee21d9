/**
 * The internal snapshot table (qcow2.txt "Snapshots"): nb_snapshots variable-length entries at
 * snapshots_offset, each 8-byte aligned:
 *   0 l1_table_offset u64, 8 l1_size u32, 12 id_str_size u16, 14 name_size u16, 16 date_sec u32,
 *   20 date_nsec u32, 24 vm_clock_nsec u64, 32 vm_state_size u32, 36 extra_data_size u32,
 *   40 extra data (vm_state_size_large u64, disk_size u64, icount u64), then id, then name.
 */
import { VdiskError } from '../../io/errors';
import { readU64, toSafeNumber } from '../../io/safe-int';
import type { SnapshotInfo } from '../types';
import { MAX_L1_BYTES } from './header';

export interface Snapshot {
  l1TableOffset: number;
  l1Size: number;
  id: string;
  name: string;
  dateSec: number;
  dateNsec: number;
  vmClockNsec: number;
  vmStateSize: number;
  /** Bytes of extra data; qcow2 v3 requires at least 16 (vm_state_size_large and disk_size). */
  extraDataSize: number;
  /** Virtual disk size when the snapshot was taken (extra data), if recorded. */
  diskSize?: number;
  icount?: number;
}

/** Parses the table; `buf` holds it from its start. Returns entries and the table's byte length. */
export function parseSnapshotTable(buf: Buffer, count: number): { snapshots: Snapshot[]; length: number } {
  const out: Snapshot[] = [];
  let off = 0;
  for (let i = 0; i < count; i++) {
    if (off + 40 > buf.length) throw VdiskError.corrupt(`qcow2 snapshot table truncated at entry ${i}`);
    // Offsets are checked only when a snapshot is used (QEMU does the same): a bad entry must
    // not stop the active layer from opening.
    const rawL1 = buf.readBigUInt64BE(off);
    const l1TableOffset = rawL1 <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(rawL1) : -1;
    const l1Size = buf.readUInt32BE(off + 8);
    const idSize = buf.readUInt16BE(off + 12);
    const nameSize = buf.readUInt16BE(off + 14);
    const extraSize = buf.readUInt32BE(off + 36);
    if (extraSize > 1024) throw VdiskError.corrupt(`qcow2 snapshot ${i} extra data too large`);
    const extra = off + 40;
    const end = extra + extraSize + idSize + nameSize;
    if (end > buf.length) throw VdiskError.corrupt(`qcow2 snapshot table truncated at entry ${i}`);
    const s: Snapshot = {
      l1TableOffset,
      l1Size,
      id: buf.subarray(extra + extraSize, extra + extraSize + idSize).toString('utf8'),
      name: buf.subarray(extra + extraSize + idSize, end).toString('utf8'),
      dateSec: buf.readUInt32BE(off + 16),
      dateNsec: buf.readUInt32BE(off + 20),
      vmClockNsec: toSafeNumber(buf.readBigUInt64BE(off + 24) & 0x1fffffffffffffn, 'vm_clock_nsec'),
      vmStateSize: buf.readUInt32BE(off + 32),
      extraDataSize: extraSize,
    };
    if (extraSize >= 8)
      s.vmStateSize = Math.max(s.vmStateSize, toSafeNumber(buf.readBigUInt64BE(extra) & 0x1fffffffffffffn, 'vm_state_size_large'));
    if (extraSize >= 16) s.diskSize = readU64(buf, extra + 8, 'snapshot disk_size');
    if (extraSize >= 24) s.icount = Number(buf.readBigInt64BE(extra + 16));
    out.push(s);
    off = Math.ceil(end / 8) * 8;
  }
  return { snapshots: out, length: off };
}

/** qcow2 v3 entries must carry vm_state_size_large and disk_size; `qemu-img check` counts each short one. */
export const MIN_V3_EXTRA_DATA = 16;

/** Refuses a snapshot whose L1 table cannot be used (checked when the snapshot is opened or walked). */
export function validateSnapshot(s: Snapshot, clusterSize: number): void {
  if (s.l1TableOffset < 0 || s.l1TableOffset % clusterSize !== 0)
    throw VdiskError.corrupt(`qcow2 snapshot '${s.name}' (id ${s.id}): L1 table offset invalid`);
  if (s.l1Size * 8 > MAX_L1_BYTES) throw VdiskError.corrupt(`qcow2 snapshot '${s.name}' (id ${s.id}): L1 table too large`);
}

/** Names usable as views: non-empty and unique (QEMU allows neither to be guaranteed). */
export function usableNames(snaps: Snapshot[]): string[] {
  const seen = new Set<string>();
  for (const s of snaps) if (s.name && !seen.has(s.name)) seen.add(s.name);
  return [...seen];
}

export function snapshotInfo(s: Snapshot): SnapshotInfo {
  const info: SnapshotInfo = {
    id: s.id,
    name: s.name,
    'vm-state-size': s.vmStateSize,
    'date-sec': s.dateSec,
    'date-nsec': s.dateNsec,
    'vm-clock-sec': Math.floor(s.vmClockNsec / 1e9),
    'vm-clock-nsec': s.vmClockNsec % 1e9,
  };
  if (s.icount !== undefined && s.icount >= 0) info.icount = s.icount;
  return info;
}
