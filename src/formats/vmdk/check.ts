import type { CheckResult, OpenOptions } from '../types';
import { VmdkImage } from './vmdk-image';
import { SparseExtent } from './sparse-extent';
import { SECTOR } from './sparse-header';

/** Grain tables read per host read: those of 512 MiB of a disk with 64 KiB grains. */
const RUN_BYTES = 1 << 20;

/**
 * Consistency check like `qemu-img check`: grain tables and grains inside the file, no two
 * entries sharing a grain, primary and redundant tables equal; unreferenced grain space is a leak.
 */
export async function checkVmdk(file: string, opts: OpenOptions & { repair: boolean }): Promise<CheckResult> {
  const res: CheckResult = { errors: 0, leaks: 0, corruptions: 0, messages: [] };
  const img = await VmdkImage.open(file, { ...opts, writable: false });
  try {
    const extents = img.sparseExtents();
    for (let i = 0; i < extents.length; i++)
      await checkExtent(extents[i]!, res, opts.progress ? (f) => opts.progress!((i + f) / extents.length) : undefined);
  } finally {
    await img.close();
  }
  return res;
}

/**
 * One sparse extent. Memory stays bounded at any size (a 2 TiB extent has 32 Mi grains): data
 * grains on the grain lattice of the data area (every grain QEMU or VMware allocates) are one bit
 * each, so "used twice" is a bit already set; only what lies off the lattice (grain tables, odd
 * offsets from other writers) is listed and sorted.
 */
async function checkExtent(ext: SparseExtent, res: CheckResult, progress?: (fraction: number) => void): Promise<void> {
  const fileSize = await ext.file.size();
  const G = ext.grainBytes;
  const dataStart = ext.header.overHead * SECTOR;
  const say = (kind: 'errors' | 'corruptions', msg: string) => {
    res[kind]++;
    if (res.messages.length < 100) res.messages.push(`${ext.fileName}: ${msg}`);
  };
  const slots = Math.max(0, Math.ceil((fileSize - dataStart) / G));
  // Compressed grains share sectors by design: only their bounds are checked.
  const lattice = ext.compressed ? undefined : new Uint8Array(Math.ceil(slots / 8));
  const others = new RangeList();
  let inData = 0;
  const use = (at: number, len: number): void => {
    const rel = at - dataStart;
    if (lattice && rel >= 0 && rel % G === 0 && len === G) {
      const s = rel / G;
      const bit = 1 << (s & 7);
      if (lattice[s >> 3]! & bit) say('corruptions', `host range ${at}+${len} is used twice`);
      else {
        lattice[s >> 3]! |= bit;
        inData += G;
      }
    } else if (!ext.compressed) others.add(at, len);
  };
  // Tables read straight from the file, neighbours in one read (a 2 TiB extent has 65,504 of
  // them, back to back after the directory): not through the image's table cache, which would
  // hold tens of megabytes of tables a check looks at once.
  const run = Buffer.alloc(Math.max(ext.gtBytes, Math.floor(RUN_BYTES / ext.gtBytes) * ext.gtBytes));
  const runCopy = ext.rgd ? Buffer.alloc(run.length) : undefined;
  // Grain table entries are little-endian u32s: read through a view, no call per entry.
  const entries = littleEndianWords(run);
  const where = (dir: Uint32Array | null, t: number) => (dir ? dir[t]! * SECTOR : 0);
  const usable = (t: number) => {
    const at = where(ext.gd, t);
    return at !== 0 && at + ext.gtBytes <= fileSize;
  };
  for (let t0 = 0; t0 < ext.tableCount;) {
    if (progress && t0 % 1024 === 0) progress(t0 / ext.tableCount);
    const at = where(ext.gd, t0);
    if (at === 0) {
      t0++;
      continue;
    }
    if (!usable(t0)) {
      say('corruptions', `grain table ${t0} at ${at} lies past the end of the file`);
      t0++;
      continue;
    }
    // The run: tables whose primary (and redundant) copies follow each other in the file.
    const rAt = where(ext.rgd, t0);
    const rUsable = (t: number) => rAt !== 0 && where(ext.rgd, t) + ext.gtBytes <= fileSize;
    let n = 1;
    while (
      t0 + n < ext.tableCount &&
      (n + 1) * ext.gtBytes <= run.length &&
      usable(t0 + n) &&
      where(ext.gd, t0 + n) === at + n * ext.gtBytes &&
      (!ext.rgd || (rAt !== 0 && where(ext.rgd, t0 + n) === rAt + n * ext.gtBytes))
    )
      n++;
    const bytes = n * ext.gtBytes;
    await ext.file.read(run.subarray(0, bytes), at, 'gt');
    const copies = runCopy && rUsable(t0) && rUsable(t0 + n - 1);
    if (copies) await ext.file.read(runCopy.subarray(0, bytes), rAt, 'gt');
    for (let k = 0; k < n; k++) {
      const t = t0 + k;
      const from = k * ext.gtBytes;
      use(where(ext.gd, t), ext.gtBytes);
      if (where(ext.rgd, t)) use(where(ext.rgd, t), ext.gtBytes);
      if (copies && run.compare(runCopy, from, from + ext.gtBytes, from, from + ext.gtBytes) !== 0)
        say('errors', `grain table ${t} and its redundant copy differ`);
      for (let i = 0; i < ext.gtEntries; i++) {
        const e = entries[from / 4 + i]!;
        if (e === 0 || ext.isZeroGte(e)) continue;
        const host = e * SECTOR;
        const len = ext.compressed ? SECTOR : G;
        if (host + len > fileSize) say('corruptions', `grain ${t * ext.gtEntries + i} at ${host} points past the end of the file`);
        else use(host, len);
      }
    }
    t0 += n;
  }
  // What lies off the lattice: against each other, then against the lattice's grains it covers.
  let prevEnd = 0;
  others.sorted((at, len) => {
    if (at < prevEnd) say('corruptions', `host range ${at}+${len} is used twice`);
    prevEnd = Math.max(prevEnd, at + len);
    if (lattice && at + len > dataStart) {
      const first = Math.max(0, Math.floor((at - dataStart) / G));
      const last = Math.min(slots - 1, Math.floor((at + len - 1 - dataStart) / G));
      for (let s = first; s <= last; s++)
        if (lattice[s >> 3]! & (1 << (s & 7))) say('corruptions', `host range ${at}+${len} is used twice`);
    }
    if (at >= dataStart) inData += len;
  });
  if (!ext.compressed) {
    const leaked = Math.max(0, fileSize - dataStart - inData);
    if (leaked >= G) {
      res.leaks += Math.floor(leaked / G);
      res.messages.push(`${ext.fileName}: ${Math.floor(leaked / G)} grain(s) of space not referenced (leaked)`);
    }
  }
}

/** Host ranges in two growing typed arrays (a 2 TiB extent lists 131,008 grain tables). */
class RangeList {
  private at = new Float64Array(1024);
  private len = new Float64Array(1024);
  private n = 0;

  add(at: number, len: number): void {
    if (this.n === this.at.length) {
      const grow = (a: Float64Array) => {
        const b = new Float64Array(a.length * 2);
        b.set(a);
        return b;
      };
      this.at = grow(this.at);
      this.len = grow(this.len);
    }
    this.at[this.n] = at;
    this.len[this.n++] = len;
  }

  /** Every range, by offset. */
  sorted(fn: (at: number, len: number) => void): void {
    const order = new Uint32Array(this.n);
    for (let i = 0; i < this.n; i++) order[i] = i;
    order.sort((a, b) => this.at[a]! - this.at[b]!);
    for (const i of order) fn(this.at[i]!, this.len[i]!);
  }
}

/** The buffer's bytes as little-endian u32 words (a copy on a big-endian host, a view here). */
function littleEndianWords(buf: Buffer): Uint32Array {
  const words = new Uint32Array(buf.buffer, buf.byteOffset, buf.length / 4);
  if (new Uint8Array(new Uint32Array([1]).buffer)[0] !== 1) throw new Error('big-endian hosts are not supported');
  return words;
}
