import * as path from 'node:path';
import type { ImageStats } from '../image';
import type { IoCounters } from '../io/counters';
import type { MergerStats } from '../merge';

/**
 * Counters of every image the mount closed, summed per image over the whole session, printed at
 * unmount with --stats (qemu-img info style: one block per image).
 */
export class SessionStats {
  private readonly totals = new Map<string, Record<string, number>>();

  add(key: string, image: ImageStats, merger: MergerStats): void {
    const t = this.totals.get(key) ?? {};
    const io = Object.values(image.io);
    const add = (k: string, v: number) => (t[k] = (t[k] ?? 0) + v);
    const hostTotal = (field: keyof IoCounters) => io.reduce((n, c) => n + c[field], 0);
    add('host reads', hostTotal('reads'));
    add('host writes', hostTotal('writes'));
    add('host flushes', hostTotal('flushes'));
    add('bytes written', hostTotal('bytesWritten'));
    for (const [k, v] of Object.entries(image.driver)) add(k, v);
    add('writes received', merger.mergedWrites);
    add('writes coalesced', merger.coalescedWrites);
    add('driver writes', merger.driverWrites);
    add('zero writes', merger.zeroWrites);
    add('read-modify-write reads', merger.rmwReads);
    this.totals.set(key, t);
  }

  report(root: string): string {
    const blocks: string[] = [];
    for (const [key, t] of this.totals) {
      blocks.push(`stats ${path.relative(root, key) || key}:`);
      for (const [k, v] of Object.entries(t)) blocks.push(`    ${k}: ${v}`);
    }
    return blocks.join('\n');
  }
}
