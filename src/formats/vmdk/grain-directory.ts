/** The grain directory of a sparse extent (VMDK 5.0, "Grain Directory"): read at open, encoded for write-back. */
import { VdiskError } from '../../io/errors';
import type { HostFile } from '../../io/host-file';
import { alignUp } from '../../io/safe-int';
import { SECTOR } from './sparse-header';

/** Sanity limit against hostile headers (QEMU refuses comparable values). */
const MAX_GD_BYTES = 256 << 20;

/** A real grain directory is inside the file; a bigger one is a hostile capacity (qemu: "L1 size too big"). */
export function checkDirectorySize(tables: number, fileSize: number, name: string): void {
  const gdBytes = tables * 4;
  if (gdBytes > MAX_GD_BYTES || gdBytes > fileSize)
    throw VdiskError.corrupt(`${name}: grain directory size too big (${tables} tables for a ${fileSize}-byte file)`);
}

/** A grain directory (or its redundant copy): one u32 sector number per grain table, 0 = no table yet. */
export async function readDirectory(
  file: HostFile,
  offsetSectors: number,
  entries: number,
  fileSize: number,
  name: string,
): Promise<Uint32Array> {
  if (offsetSectors * SECTOR + entries * 4 > fileSize)
    throw VdiskError.corrupt(`${name}: grain directory at sector ${offsetSectors} lies past the end of the file`);
  const buf = Buffer.alloc(entries * 4);
  await file.read(buf, offsetSectors * SECTOR, 'gd');
  const out = new Uint32Array(entries);
  for (let i = 0; i < entries; i++) out[i] = buf.readUInt32LE(i * 4);
  return out;
}

/** The on-disk directory, sector-padded; tables not yet written keep entry 0 (never point at an unwritten table). */
export function encodeDirectory(d: Uint32Array, unwritten: Set<number>): Buffer {
  const buf = Buffer.alloc(alignUp(d.length * 4, SECTOR));
  for (let i = 0; i < d.length; i++) buf.writeUInt32LE(unwritten.has(i) ? 0 : d[i]!, i * 4);
  return buf;
}
