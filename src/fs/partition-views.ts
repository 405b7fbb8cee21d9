/**
 * Partitions as files: every partition of a disk view is shown beside it as a raw file of its own
 * (`server.qcow2.raw` → `server.qcow2.p1.raw`, Linux numbering), a window on the disk view that
 * reads and writes through the same merger and driver. Loop-mounting a partition then needs no
 * `losetup -P` (no partition devices in containers) and no offset maths.
 *
 * The list follows the table: it is read again after a write touches a sector the table was read
 * from (sfdisk, parted), after the last writer closes, and when the image file changes outside.
 * A damaged or absurd table shows no partition files and logs one line; the disk view stays.
 */
import fs from 'node:fs';
import type { Image } from '../image';
import createDebug from 'debug';
import { readPartitionTable, SECTOR, type Partition, type PartitionTable } from '../image/partition-table';
import { ImageTable } from './image-table';
import type { ImageView } from './view-tree';

const log = createDebug('vdiskfs:fs');

interface Cached {
  stamp: string;
  table: PartitionTable;
  /** Byte ranges of the disk the table was read from: a write there makes it stale. */
  sectors: Array<[number, number]>;
}

export class PartitionViews {
  private readonly cache = new Map<string, Cached>();
  /** Bumped per image when what we read may have changed while the image is open. */
  private readonly generation = new Map<string, number>();

  /** Damaged tables already reported (one line per table state). */
  private readonly warned = new Set<string>();

  constructor(
    private readonly images: ImageTable,
    private readonly warn: (line: string) => void,
  ) {}

  /** The partitions of a disk view (none when the table is missing, damaged or unreadable). */
  /** `fileStamp`: the image file's stamp when the caller just took it (a listing's probe). */
  async partitionsOf(view: ImageView, fileStamp?: string): Promise<Partition[]> {
    const key = ImageTable.keyOf(view);
    const stamp = this.stampOf(view, fileStamp);
    let cached = this.cache.get(key);
    if (!cached || cached.stamp !== stamp) {
      cached = { stamp, ...(await this.read(view)) };
      this.remember(view, cached);
    }
    return cached.table.kind === 'mbr' || cached.table.kind === 'gpt' ? cached.table.partitions : [];
  }

  /**
   * Reads the table of a view nobody has open from `image`, opened by the listing's probe, so a
   * folder of thousands of images is listed with one open each, not two.
   */
  async readFrom(view: ImageView, image: Image): Promise<void> {
    if (this.images.get(view)) return; // open here: partitionsOf reads it through its merger
    const stamp = this.stampOf(view);
    if (this.cache.get(ImageTable.keyOf(view))?.stamp === stamp) return;
    const read = (offset: number, into: Buffer) => image.read(offset, into);
    this.remember(view, { stamp, ...(await readTable(read, image.virtualSize)) });
  }

  /** What the cached table of a view must match: the open image's generation, else the host file. */
  private stampOf(view: ImageView, known?: string): string {
    const open = this.images.get(view);
    return open
      ? `open:${this.generation.get(ImageTable.keyOf(view)) ?? 0}:${open.image.virtualSize}`
      : (known ?? fileStamp(view.hostPath));
  }

  private remember(view: ImageView, cached: Cached): void {
    const key = ImageTable.keyOf(view);
    this.cache.set(key, cached);
    const said = `${key}:${cached.table.kind === 'damaged' ? cached.table.reason : ''}`;
    if (cached.table.kind === 'damaged' && !this.warned.has(said)) {
      this.warned.add(said);
      this.warn(`no partition files for ${view.hostPath}: the partition table is damaged (${cached.table.reason})`);
    }
  }

  /** A write at [offset, offset+length) of the disk: true when it touched the table (read it again). */
  noteWrite(view: ImageView, offset: number, length: number): boolean {
    const cached = this.cache.get(ImageTable.keyOf(view));
    const sectors = cached?.sectors ?? [[0, 34 * SECTOR]];
    const touches = sectors.some(([s, e]) => offset < e && offset + length > s);
    if (touches) this.invalidate(view);
    return touches;
  }

  /** The disk changed in a way we cannot tell (closed by a writer, resized). */
  invalidate(view: ImageView): void {
    const key = ImageTable.keyOf(view);
    this.generation.set(key, (this.generation.get(key) ?? 0) + 1);
    this.cache.delete(key);
  }

  /** Reads the table through the view's merger (pending writes first), opening the image if need be. */
  private async read(view: ImageView): Promise<{ table: PartitionTable; sectors: Array<[number, number]> }> {
    let entry;
    try {
      entry = await this.images.acquire(view, false);
    } catch (e) {
      log('partition table of %s not read: %s', view.hostPath, (e as Error).message);
      return { table: { kind: 'none' }, sectors: [[0, 34 * SECTOR]] };
    }
    try {
      const merger = entry.merger;
      return await readTable((offset, into) => merger.read(offset, into), entry.image.virtualSize);
    } finally {
      await this.images.release(entry);
    }
  }
}

/** The table of a disk of `size` bytes read with `read`, and the byte ranges it was read from. */
async function readTable(
  read: (offset: number, into: Buffer) => Promise<unknown>,
  size: number,
): Promise<{ table: PartitionTable; sectors: Array<[number, number]> }> {
  // A table that appears later is written to these sectors: watch them even when empty.
  const sectors: Array<[number, number]> = [[0, 34 * SECTOR]];
  const readDisk = async (offset: number, length: number): Promise<Buffer> => {
    sectors.push([offset, offset + length]);
    const b = Buffer.alloc(length);
    const n = Math.max(0, Math.min(length, size - offset));
    if (n > 0) await read(offset, b.subarray(0, n));
    return b;
  };
  try {
    return { table: await readPartitionTable(readDisk, size), sectors };
  } catch (e) {
    return { table: { kind: 'damaged', reason: `cannot read it: ${(e as Error).message}` }, sectors };
  }
}

function fileStamp(file: string): string {
  const st = fs.statSync(file, { throwIfNoEntry: false });
  return st ? `${st.mtimeMs}:${st.size}:${st.ino}` : 'gone';
}
