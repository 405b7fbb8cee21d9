/**
 * A count per host cluster in the narrowest array that holds them, as QEMU's check does: 16 bits
 * each, a cluster whose count passes 65534 widened into a map (a snapshot-heavy or hostile image
 * may count one cluster millions of times). 2 bytes per cluster: a 2 TiB file of 64 KiB clusters
 * takes 64 MiB.
 */
const WIDE = 0xffff;
const MAX = 0xffffffff;

export class ClusterCounts {
  private readonly narrow: Uint16Array;
  private readonly wide = new Map<number, number>();

  constructor(readonly length: number) {
    this.narrow = new Uint16Array(length);
  }

  get(c: number): number {
    const v = this.narrow[c]!;
    return v === WIDE ? this.wide.get(c)! : v;
  }

  /** Adds `times` (may be negative) to cluster `c`'s count; counts saturate at 2^32-1 and never go below 0. */
  add(c: number, times: number): void {
    const v = this.narrow[c]!;
    if (v !== WIDE) {
      const n = v + times;
      if (n >= 0 && n < WIDE) {
        this.narrow[c] = n;
        return;
      }
    }
    const n = Math.max(0, Math.min(MAX, this.get(c) + times));
    if (n < WIDE) {
      this.narrow[c] = n;
      this.wide.delete(c);
    } else {
      this.narrow[c] = WIDE;
      this.wide.set(c, n);
    }
  }

  set(c: number, n: number): void {
    this.add(c, n - this.get(c));
  }

  /** One past the last cluster with a count (0 when none has). */
  end(): number {
    let e = this.length;
    while (e > 0 && this.narrow[e - 1] === 0) e--;
    return e;
  }
}
