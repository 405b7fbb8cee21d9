import fs from 'node:fs';
import type { OpenImage } from './image-table';

/** How a handle was opened: decides write-through and read-only behaviour per handle. */
export interface Handle {
  entry: OpenImage;
  writable: boolean;
  /** O_DIRECT / O_SYNC / O_DSYNC: writes bypass merging (rule 6); sync also flushes the image. */
  writeThrough: boolean;
  sync: boolean;
  /** A partition file: the handle sees [offset, offset+size) of the disk view. */
  window?: { offset: number; size: number };
}

const { O_ACCMODE, O_RDONLY, O_DIRECT, O_SYNC, O_DSYNC } = { O_ACCMODE: 3, ...fs.constants };

export function wantsWrite(flags: number): boolean {
  return (flags & O_ACCMODE) !== O_RDONLY;
}

export function handleMode(flags: number): { writeThrough: boolean; sync: boolean } {
  const sync = (flags & (O_SYNC ?? 0)) === O_SYNC || (flags & (O_DSYNC ?? 0)) !== 0;
  const direct = (flags & (O_DIRECT ?? 0)) !== 0;
  return { writeThrough: direct || sync, sync };
}

/** FUSE file handles are small integers; freed numbers are reused. */
export class HandleTable {
  private readonly handles = new Map<number, Handle>();
  private next = 1;

  add(h: Handle): number {
    while (this.handles.has(this.next)) this.next = (this.next % 0x7fffffff) + 1;
    const fd = this.next;
    this.handles.set(fd, h);
    this.next = (this.next % 0x7fffffff) + 1;
    return fd;
  }
  get(fd: number): Handle | undefined {
    return this.handles.get(fd);
  }
  remove(fd: number): Handle | undefined {
    const h = this.handles.get(fd);
    this.handles.delete(fd);
    return h;
  }
  all(): Handle[] {
    return [...this.handles.values()];
  }
}
