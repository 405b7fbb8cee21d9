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
import * as fs from 'node:fs/promises';
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
  async partitionsOf(view: ImageView): Promise<Partition[]> {
    const key = ImageTable.keyOf(view);
    const open = this.images.get(view);
    const stamp = open ? `open:${this.generation.get(key) ?? 0}:${open.image.virtualSize}` : await fileStamp(view.hostPath);
    let cached = this.cache.get(key);
    if (!cached || cached.stamp !== stamp) {
      cached = { stamp, ...(await this.read(view)) };
      this.cache.set(key, cached);
      const said = `${key}:${cached.table.kind === 'damaged' ? cached.table.reason : ''}`;
      if (cached.table.kind === 'damaged' && !this.warned.has(said)) {
        this.warned.add(said);
        this.warn(`no partition files for ${view.hostPath}: the partition table is damaged (${cached.table.reason})`);
      }
    }
    return cached.table.kind === 'mbr' || cached.table.kind === 'gpt' ? cached.table.partitions : [];
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

  private async read(view: ImageView): Promise<{ table: PartitionTable; sectors: Array<[number, number]> }> {
    const sectors: Array<[number, number]> = [];
    let entry;
    try {
      entry = await this.images.acquire(view, false);
    } catch (e) {
      log('partition table of %s not read: %s', view.hostPath, (e as Error).message);
      return { table: { kind: 'none' }, sectors: [[0, 34 * SECTOR]] };
    }
    try {
      const size = entry.image.virtualSize;
      const readDisk = async (offset: number, length: number): Promise<Buffer> => {
        sectors.push([offset, offset + length]);
        const b = Buffer.alloc(length);
        const n = Math.max(0, Math.min(length, size - offset));
        if (n > 0) await entry.merger.read(offset, b.subarray(0, n));
        return b;
      };
      // A table that appears later is written to these sectors: watch them even when empty.
      sectors.push([0, 34 * SECTOR]);
      const table = await readPartitionTable(readDisk, size);
      return { table, sectors };
    } catch (e) {
      return { table: { kind: 'damaged', reason: `cannot read it: ${(e as Error).message}` }, sectors };
    } finally {
      await this.images.release(entry);
    }
  }
}

async function fileStamp(file: string): Promise<string> {
  const st = await fs.stat(file).catch(() => undefined);
  return st ? `${st.mtimeMs}:${st.size}:${st.ino}` : 'gone';
}
