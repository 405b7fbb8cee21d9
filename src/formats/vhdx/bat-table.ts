/**
 * The BAT in memory: the stored bytes (bat.ts decodes them), which entries changed since the last
 * commit (by 4 KiB sector, with a version so a sector changed during a commit stays dirty), and
 * the payload-block view the read and write paths use.
 */
import * as bat from './bat';
import type { DirtySectors } from './metadata-log';

export class BatTable implements DirtySectors {
  private readonly dirty = new Map<number, number>();
  private version = 0;

  constructor(
    readonly buf: Buffer,
    readonly g: bat.BatGeometry,
    /** File offset of the BAT region. */
    readonly fileOffset: number,
  ) {}

  state(block: number): number {
    return bat.entryState(this.buf, bat.payloadIndex(this.g, block));
  }

  /** File offset of payload block `block` (meaningful when FULLY/PARTIALLY_PRESENT). */
  host(block: number): number {
    return bat.entryOffsetMB(this.buf, bat.payloadIndex(this.g, block)) * bat.MiB;
  }

  set(block: number, state: number, host: number): void {
    this.setEntry(bat.payloadIndex(this.g, block), state, host);
  }

  /** The sector bitmap block of chunk `chunk`: its file offset, or undefined when NOT_PRESENT. */
  bitmapHost(chunk: number): number | undefined {
    const i = bat.bitmapIndex(this.g, chunk);
    if (i >= this.g.entries || bat.entryState(this.buf, i) !== bat.SB_PRESENT) return undefined;
    return bat.entryOffsetMB(this.buf, i) * bat.MiB;
  }

  /** Chunk `chunk`'s sector bitmap block is now at `host` (PRESENT). */
  setBitmap(chunk: number, host: number): void {
    this.setEntry(bat.bitmapIndex(this.g, chunk), bat.SB_PRESENT, host);
  }

  private setEntry(i: number, state: number, host: number): void {
    bat.setEntry(this.buf, i, state, host / bat.MiB);
    this.dirty.set(Math.floor((i * 8) / bat.BAT_SECTOR), ++this.version);
  }

  get dirtyCount(): number {
    return this.dirty.size;
  }

  snapshot(): Array<[number, Buffer, number]> {
    return [...this.dirty]
      .sort((a, b) => a[0] - b[0])
      .map(([sec, v]) => [
        this.fileOffset + sec * bat.BAT_SECTOR,
        Buffer.from(this.buf.subarray(sec * bat.BAT_SECTOR, (sec + 1) * bat.BAT_SECTOR)),
        v,
      ]);
  }

  committed(offset: number, version: number): void {
    const sec = (offset - this.fileOffset) / bat.BAT_SECTOR;
    if (this.dirty.get(sec) === version) this.dirty.delete(sec);
  }
}
