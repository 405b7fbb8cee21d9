/**
 * GUIDs as VHDX stores them ([MS-VHDX] 2.1: the Windows GUID layout: Data1 (4 bytes), Data2 and
 * Data3 (2 bytes each) little-endian, Data4 (8 bytes) as is). Kept as the 16 stored bytes.
 */
import { randomBytes } from 'node:crypto';

export const GUID_SIZE = 16;

/** The stored bytes of a GUID written as text ("2DC27766-F623-4200-9D64-115E9BFD4A08", braces optional). */
export function guidBytes(text: string): Buffer {
  const hex = text.replace(/[{}-]/g, '');
  if (!/^[0-9a-fA-F]{32}$/.test(hex)) throw new Error(`not a GUID: ${text}`);
  const b = Buffer.from(hex, 'hex');
  b.subarray(0, 4).reverse();
  b.subarray(4, 6).reverse();
  b.subarray(6, 8).reverse();
  return b;
}

/** Text form (lower case, no braces) of the GUID stored at `buf[off..off+16)`. */
export function guidText(buf: Buffer, off = 0): string {
  const b = Buffer.from(buf.subarray(off, off + GUID_SIZE));
  b.subarray(0, 4).reverse();
  b.subarray(4, 6).reverse();
  b.subarray(6, 8).reverse();
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export function isNullGuid(g: Buffer): boolean {
  for (let i = 0; i < GUID_SIZE; i++) if (g[i] !== 0) return false;
  return true;
}

/** A random (version 4) GUID, stored form. */
export function newGuid(): Buffer {
  const b = randomBytes(GUID_SIZE);
  b[7] = (b[7]! & 0x0f) | 0x40; // Data3's high nibble is the version; Data3 is stored little-endian
  b[8] = (b[8]! & 0x3f) | 0x80;
  return b;
}

export const NULL_GUID = Buffer.alloc(GUID_SIZE);
