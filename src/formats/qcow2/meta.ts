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

export async function readMeta(file: HostFile): Promise<ImageMeta> {
  const fileSize = await file.size();
  const head = Buffer.alloc(4096);
  await file.read(head, 0, 'header');
  const header = parseHeader(head);
  const cs = 2 ** header.clusterBits;
  const cluster0 = cs <= head.length ? head.subarray(0, cs) : Buffer.alloc(cs);
  if (cs > head.length) await file.read(cluster0, 0, 'header');
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
  return { header, ext, cluster0, backingName, fileSize };
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
