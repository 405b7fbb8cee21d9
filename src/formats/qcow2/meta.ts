/**
 * Reading an image's first cluster: header, extensions, backing file name, feature checks, and
 * the snapshot table. Shared by open, check, listSnapshots and backingFileOf.
 */
import * as path from 'node:path';
import { VdiskError } from '../../io/errors';
import type { HostFile } from '../../io/host-file';
import { Extensions, parseExtensions } from './extensions';
import { bitNumbers, Header, INCOMPAT_DATA_FILE, INCOMPAT_KNOWN, MAX_SNAPSHOT_TABLE_BYTES, parseHeader } from './header';
import { parseSnapshotTable, Snapshot } from './snapshot-table';

export interface ImageMeta {
  header: Header;
  ext: Extensions;
  cluster0: Buffer;
  backingName?: string;
  fileSize: number;
}

/** `known`: the file's first 4 KiB, when the caller has them already (a listing's probe). */
export async function readMeta(file: HostFile, known?: Buffer): Promise<ImageMeta> {
  const fileSize = await file.size();
  let head = known?.length === HEAD_BYTES ? known : undefined;
  if (!head) {
    head = Buffer.allocUnsafe(HEAD_BYTES);
    await file.read(head, 0, 'header');
  }
  const header = parseHeader(head);
  const cs = 2 ** header.clusterBits;
  // Most images keep header, extensions and backing name in the first 4 KiB: a whole 64 KiB
  // cluster read (and zeroed) per open was a third of opening one image of a folder of thousands.
  let cluster0 = head.subarray(0, Math.min(cs, HEAD_BYTES));
  if (cs > HEAD_BYTES && !fitsInHead(head, header)) {
    cluster0 = Buffer.allocUnsafe(cs);
    await file.read(cluster0, 0, 'header');
  }
  return { ...metaOf(header, cluster0), fileSize };
}

/**
 * What the first 4 KiB alone tell, when they hold the extensions and the backing name
 * (undefined otherwise): a listing's probe then needs no second open of the file.
 */
export function metaFromHead(head: Buffer): Omit<ImageMeta, 'fileSize'> | undefined {
  if (head.length !== HEAD_BYTES) return undefined;
  const header = parseHeader(head);
  const cs = 2 ** header.clusterBits;
  if (cs > HEAD_BYTES && !fitsInHead(head, header)) return undefined;
  return metaOf(header, head.subarray(0, Math.min(cs, HEAD_BYTES)));
}

/** Extensions, feature checks and backing name from the first cluster (or the part that holds them). */
function metaOf(header: Header, cluster0: Buffer): Omit<ImageMeta, 'fileSize'> {
  const cs = 2 ** header.clusterBits;
  // v2 images carry extensions after byte 72 too; they stop where the backing file name starts.
  const ext = parseExtensions(cluster0, header.headerLength, header.backingFileOffset > 0 ? header.backingFileOffset : cs);
  const unknown = header.incompatible & ~INCOMPAT_KNOWN;
  if (unknown !== 0n) {
    const names = bitNumbers(unknown).map((b) => {
      const f = ext.features.find((x) => x.type === 'incompatible' && x.bit === b);
      return f ? `bit ${b} (${f.name})` : `bit ${b}`;
    });
    throw VdiskError.unsupported(`qcow2 unknown incompatible feature ${names.join(', ')}`);
  }
  if ((header.incompatible & INCOMPAT_DATA_FILE) !== 0n && !ext.dataFile)
    throw VdiskError.corrupt('qcow2 external data file bit set but no data file name');
  let backingName: string | undefined;
  if (header.backingFileOffset !== 0 && header.backingFileSize > 0) {
    backingName = cluster0.subarray(header.backingFileOffset, header.backingFileOffset + header.backingFileSize).toString('utf8');
  }
  return { header, ext, cluster0, backingName };
}

const HEAD_BYTES = 4096;

/** Do the extensions (up to their end marker) and the backing file name lie in `head`? */
function fitsInHead(head: Buffer, header: Header): boolean {
  if (header.backingFileOffset > 0 && header.backingFileOffset + header.backingFileSize > head.length) return false;
  const limit = header.backingFileOffset > 0 ? Math.min(header.backingFileOffset, head.length) : head.length;
  for (let off = header.headerLength; ;) {
    if (off + 8 > limit) return limit < head.length; // ended by the backing name before the head's end
    if (head.readUInt32BE(off) === 0) return true; // the end marker
    off += 8 + Math.ceil(head.readUInt32BE(off + 4) / 8) * 8;
  }
}

/** A backing / data file name relative to the image's folder. */
export function resolveRelative(imagePath: string, name: string): string {
  const n = name.startsWith('file:') ? name.slice(5) : name;
  return path.isAbsolute(n) ? n : path.resolve(path.dirname(imagePath), n);
}

export async function readSnapshots(file: HostFile, meta: ImageMeta): Promise<Snapshot[]> {
  return (await readSnapshotTable(file, meta)).snapshots;
}

export async function readSnapshotTable(file: HostFile, meta: ImageMeta): Promise<{ snapshots: Snapshot[]; length: number }> {
  const h = meta.header;
  if (h.nbSnapshots === 0) return { snapshots: [], length: 0 };
  const avail = Math.max(0, meta.fileSize - h.snapshotsOffset);
  // Past the end of the file reads as zeros (QEMU does the same), so allow for the entries' minimum size.
  const len = Math.min(MAX_SNAPSHOT_TABLE_BYTES, avail + h.nbSnapshots * 48);
  const buf = Buffer.alloc(len);
  await file.read(buf, h.snapshotsOffset, 'snapshot');
  return parseSnapshotTable(buf, h.nbSnapshots);
}
