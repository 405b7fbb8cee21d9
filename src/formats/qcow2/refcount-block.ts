/**
 * Refcount blocks (qcow2.txt "Host cluster management"): one cluster of big-endian
 * refcount_bits-wide counters (1..64 bits; sub-byte widths pack the lowest index in the
 * least significant bits of a byte). Refcount table entries: bits 9-63 block offset, 0 = none.
 */
import { VdiskError } from '../../io/errors';

export function getRefcount(block: Buffer, index: number, order: number): number {
  switch (order) {
    case 4:
      return block.readUInt16BE(index * 2);
    case 5:
      return block.readUInt32BE(index * 4);
    case 3:
      return block.readUInt8(index);
    case 6: {
      const hi = block.readUInt32BE(index * 8);
      const lo = block.readUInt32BE(index * 8 + 4);
      if (hi >= 0x200000) throw VdiskError.corrupt('qcow2 refcount beyond 2^53');
      return hi * 2 ** 32 + lo;
    }
    default: {
      const bits = 1 << order; // 1, 2 or 4
      const bitPos = index * bits;
      const byte = block.readUInt8(bitPos >>> 3);
      return (byte >>> (bitPos & 7)) & ((1 << bits) - 1);
    }
  }
}

export function maxRefcount(order: number): number {
  return order >= 6 ? Number.MAX_SAFE_INTEGER : 2 ** (1 << order) - 1;
}

export function setRefcount(block: Buffer, index: number, order: number, value: number): void {
  if (value < 0 || value > maxRefcount(order)) throw VdiskError.invalid(`refcount ${value} does not fit ${1 << order} bits`);
  switch (order) {
    case 4:
      block.writeUInt16BE(value, index * 2);
      return;
    case 5:
      block.writeUInt32BE(value, index * 4);
      return;
    case 3:
      block.writeUInt8(value, index);
      return;
    case 6:
      block.writeUInt32BE(Math.floor(value / 2 ** 32), index * 8);
      block.writeUInt32BE(value % 2 ** 32, index * 8 + 4);
      return;
    default: {
      const bits = 1 << order;
      const bitPos = index * bits;
      const mask = ((1 << bits) - 1) << (bitPos & 7);
      const byte = block.readUInt8(bitPos >>> 3);
      block.writeUInt8(((byte & ~mask) | (value << (bitPos & 7))) & 0xff, bitPos >>> 3);
    }
  }
}

/** Refcount table entry: host offset of a refcount block (0 = not allocated). */
export function reftableEntry(table: Buffer, i: number): number {
  const hi = table.readUInt32BE(i * 8);
  const lo = table.readUInt32BE(i * 8 + 4);
  if (hi >= 0x200000) throw VdiskError.corrupt(`qcow2 refcount table entry ${i} out of range`);
  return hi * 2 ** 32 + ((lo & 0xfffffe00) >>> 0);
}

export function setReftableEntry(table: Buffer, i: number, host: number): void {
  table.writeUInt32BE(Math.floor(host / 2 ** 32), i * 8);
  table.writeUInt32BE(host % 2 ** 32, i * 8 + 4);
}
