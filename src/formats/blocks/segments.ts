/**
 * Host writes of a block store, gathered: pieces that touch are sent as one vectored write, so a
 * run of new blocks at the end of the file costs one write however it was cut.
 */
import type { IoTag } from '../../io/counters';
import type { HostFile } from '../../io/host-file';
import { allEnded } from '../../io/settle';

export class Segments {
  private readonly runs: Array<{ at: number; end: number; bufs: Buffer[] }> = [];

  add(at: number, data: Buffer): void {
    if (data.length === 0) return;
    const last = this.runs[this.runs.length - 1];
    if (last && last.end === at) {
      last.bufs.push(data);
      last.end += data.length;
    } else this.runs.push({ at, end: at + data.length, bufs: [data] });
  }

  /** The end of the furthest byte added (0 when nothing was). */
  get end(): number {
    return this.runs.reduce((n, r) => Math.max(n, r.end), 0);
  }

  /** Every run written; ends when all have, also when one fails (its slots may be handed out again next). */
  write(file: HostFile, tag: IoTag): Promise<void> {
    return allEnded(this.runs.map((r) => file.write(r.bufs.length === 1 ? r.bufs[0]! : r.bufs, r.at, tag)));
  }
}

/**
 * A block's bytes for a host region: only the content's own bytes when the region lies past the
 * end of the file (the host reads zeros there), else the whole block with zeros around them.
 */
export function blockBytes(content: { at: number; data: Buffer }, blockSize: number, fresh: boolean): { at: number; data: Buffer } {
  if (fresh || (content.at === 0 && content.data.length === blockSize)) return content;
  const whole = Buffer.alloc(blockSize);
  content.data.copy(whole, content.at);
  return { at: 0, data: whole };
}
