/**
 * The parent locator metadata item ([MS-VHDX] 2.6.2.6): LocatorType (a GUID; the VHDX type is
 * B04AEFB7-D19E-4A81-B789-25B8E9445913), Reserved, KeyValueCount, then 12-byte entries (KeyOffset,
 * ValueOffset from the start of the item, KeyLength, ValueLength) of UTF-16LE strings. Keys:
 * parent_linkage (the parent's DataWriteGuid, "{...}"), parent_linkage2, relative_path,
 * volume_path, absolute_win32_path.
 */
import { VdiskError } from '../../io/errors';
import { guidBytes, guidText } from './guid';

export const VHDX_LOCATOR_TYPE = guidBytes('B04AEFB7-D19E-4A81-B789-25B8E9445913');
const MAX_ENTRIES = 256;

export interface ParentLocator {
  type: string;
  entries: Map<string, string>;
}

export function parseParentLocator(file: string, buf: Buffer): ParentLocator {
  if (buf.length < 20) throw VdiskError.corrupt(`${file}: parent locator holds ${buf.length} bytes`);
  const count = buf.readUInt16LE(18);
  if (count > MAX_ENTRIES || 20 + count * 12 > buf.length)
    throw VdiskError.corrupt(`${file}: parent locator lists ${count} entries in ${buf.length} bytes`);
  const entries = new Map<string, string>();
  const str = (off: number, len: number, what: string): string => {
    if (len % 2 !== 0 || off + len > buf.length || len === 0)
      throw VdiskError.corrupt(`${file}: parent locator ${what} at ${off}+${len} lies outside the item`);
    return buf.toString('utf16le', off, off + len);
  };
  for (let i = 0; i < count; i++) {
    const at = 20 + i * 12;
    const key = str(buf.readUInt32LE(at), buf.readUInt16LE(at + 8), 'key');
    entries.set(key, str(buf.readUInt32LE(at + 4), buf.readUInt16LE(at + 10), `value of ${key}`));
  }
  return { type: guidText(buf, 0), entries };
}

export function serializeParentLocator(entries: Array<[string, string]>): Buffer {
  const strings: Buffer[] = [];
  const head = Buffer.alloc(20 + entries.length * 12);
  VHDX_LOCATOR_TYPE.copy(head, 0);
  head.writeUInt16LE(entries.length, 18);
  let off = head.length;
  entries.forEach(([k, v], i) => {
    const kb = Buffer.from(k, 'utf16le');
    const vb = Buffer.from(v, 'utf16le');
    const at = 20 + i * 12;
    head.writeUInt32LE(off, at);
    head.writeUInt32LE(off + kb.length, at + 4);
    head.writeUInt16LE(kb.length, at + 8);
    head.writeUInt16LE(vb.length, at + 10);
    strings.push(kb, vb);
    off += kb.length + vb.length;
  });
  return Buffer.concat([head, ...strings]);
}
