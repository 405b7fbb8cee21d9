/**
 * The file type identifier ([MS-VHDX] 2.2.1): the first 64 KiB of the file. Signature
 * "vhdxfile" (8 bytes) then Creator, up to 256 UTF-16 characters naming the program that made it.
 */
export const FILE_ID_SIZE = 64 * 1024;
export const SIGNATURE = 'vhdxfile';

export function isVhdx(head: Buffer): boolean {
  return head.length >= 8 && head.toString('latin1', 0, 8) === SIGNATURE;
}

/** Creator text, NUL-terminated within its 512 bytes. */
export function parseCreator(buf: Buffer): string {
  const raw = buf.subarray(8, Math.min(buf.length, 8 + 512));
  let end = 0;
  while (end + 1 < raw.length && (raw[end] !== 0 || raw[end + 1] !== 0)) end += 2;
  return raw.toString('utf16le', 0, end);
}

export function serializeFileIdentifier(creator: string): Buffer {
  const b = Buffer.alloc(FILE_ID_SIZE);
  b.write(SIGNATURE, 0, 'latin1');
  b.write(creator.slice(0, 255), 8, 'utf16le');
  return b;
}
