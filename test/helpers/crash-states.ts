/**
 * Simulated power cuts. Every host write (with its bytes) and every barrier (fdatasync) of a run
 * is recorded with the logical time it was issued and completed, together with the guest's writes
 * and flushes. A crash state is: the file as it was, plus every write that completed before the
 * start of the last completed barrier, plus ANY subset of the writes issued after that (a disk may
 * reorder anything it was not told to order). Each state is materialised as a file, checked by
 * `qemu-img check` (no corruption; leaks are fine) and read back: what a completed flush()
 * acknowledged must be there, and bytes no write touched must keep their old content.
 */
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import { HostFile } from '../../src/io/host-file';
import type { IoTag } from '../../src/io/counters';
import type { Image } from '../../src/formats/types';
import { openImage } from '../../src/image/open';
import { currentHeader, HEADER_OFFSETS, HEADER_SIZE } from '../../src/formats/vhdx/header';
import { isNullGuid } from '../../src/formats/vhdx/guid';
import { injectedError, isInjected } from './host-faults';
import { rng } from './qemu';

interface HostWrite {
  kind: 'write' | 'truncate' | 'punch';
  offset: number;
  length?: number; // punch: the range reads as zeros afterwards, the file keeps its size
  tag?: IoTag;
  data?: Buffer; // write: the bytes, copied when issued
  issued: number;
  completed: number; // Infinity while in flight (or failed)
}

interface Barrier {
  start: number;
  end: number;
}

interface GuestWrite {
  what: string; // write, zeroes, discard
  offset: number;
  data: Buffer;
  start: number;
  end: number;
  failed?: boolean; // an injected host failure made it fail: never acknowledged
}

interface GuestFlush {
  start: number;
  end: number; // Infinity when it failed: it acknowledged nothing
}

/**
 * Host writes that fail (EIO) at random while recording. A failed write is recorded as never
 * completed: its bytes may or may not be on the disk in any later crash state, as after a real
 * failed write. Guest writes and flushes that fail because of one are not acknowledged.
 */
export interface HostFaults {
  rate: number; // chance per host write of the recorded file
  /** Other chances for writes of some tags (rare ones, such as a root table's, fail more often). */
  byTag?: Partial<Record<IoTag, number>>;
  seed: number;
}

/** Records host I/O on one file by wrapping HostFile's write/truncate/punchHole/datasync for the run. */
export class CrashRecorder {
  private clock = 0;
  readonly writes: HostWrite[] = [];
  readonly barriers: Barrier[] = [];
  readonly guestWrites: GuestWrite[] = [];
  readonly guestFlushes: GuestFlush[] = [];
  readonly base: Buffer;
  private restore: (() => void) | undefined;
  /** While set: host writes fail at random (see HostFaults); `injected` counts them. */
  faults: HostFaults | undefined;
  injected = 0;
  private faultRng: (() => number) | undefined;
  /** Lets a test hold a host write or barrier back (by its tag) to force an interleaving. */
  hold: ((kind: 'write' | 'sync', tag: IoTag | undefined) => Promise<void> | undefined) | undefined;

  constructor(readonly file: string) {
    this.base = fs.readFileSync(file);
    const proto = HostFile.prototype;
    const { write, writeSync, truncate, datasync, punchHole } = proto;
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const rec = this;
    proto.write = async function (this: HostFile, data: Buffer | Buffer[], pos: number, tag?: IoTag): Promise<void> {
      if (this.path !== rec.file) return write.call(this, data, pos, tag);
      await rec.hold?.('write', tag);
      const w: HostWrite = {
        kind: 'write',
        tag,
        offset: pos,
        data: Buffer.concat(Array.isArray(data) ? data : [data]),
        issued: rec.clock++,
        completed: Infinity,
      };
      rec.writes.push(w);
      if (rec.failNow(tag)) throw injectedError('EIO');
      await write.call(this, data, pos, tag);
      w.completed = rec.clock++;
    };
    // The synchronous fast paths' host writes (Image.writeSync): issued and completed in one step.
    proto.writeSync = function (this: HostFile, data: Buffer, pos: number, tag?: IoTag): boolean {
      if (this.path !== rec.file) return writeSync.call(this, data, pos, tag);
      const w: HostWrite = { kind: 'write', tag, offset: pos, data: Buffer.from(data), issued: rec.clock++, completed: Infinity };
      if (rec.failNow(tag)) {
        rec.writes.push(w);
        throw injectedError('EIO');
      }
      const done = writeSync.call(this, data, pos, tag);
      if (done) rec.writes.push(w);
      w.completed = rec.clock++;
      return done;
    };
    proto.truncate = async function (this: HostFile, length: number): Promise<void> {
      if (this.path !== rec.file) return truncate.call(this, length);
      const w: HostWrite = { kind: 'truncate', offset: length, issued: rec.clock++, completed: Infinity };
      rec.writes.push(w);
      await truncate.call(this, length);
      w.completed = rec.clock++;
    };
    proto.punchHole = function (this: HostFile, offset: number, length: number, tag?: IoTag): boolean {
      if (this.path !== rec.file) return punchHole.call(this, offset, length, tag);
      const w: HostWrite = { kind: 'punch', offset, length, issued: rec.clock++, completed: Infinity };
      const done = punchHole.call(this, offset, length, tag);
      if (done) rec.writes.push(w);
      w.completed = rec.clock++;
      return done;
    };
    proto.datasync = async function (this: HostFile, tag?: IoTag): Promise<void> {
      if (this.path !== rec.file) return datasync.call(this, tag);
      await rec.hold?.('sync', tag);
      const start = rec.clock++;
      await datasync.call(this, tag);
      rec.barriers.push({ start, end: rec.clock++ });
    };
    this.restore = () => Object.assign(proto, { write, writeSync, truncate, datasync, punchHole });
  }

  /** Whether the host write being made fails (faults set). */
  private failNow(tag: IoTag | undefined): boolean {
    if (!this.faults) return false;
    this.faultRng ??= rng(this.faults.seed);
    const rate = (tag && this.faults.byTag?.[tag]) ?? this.faults.rate;
    if (this.faultRng() >= rate) return false;
    this.injected++;
    return true;
  }

  /**
   * A guest write through the image, timed on the same clock as the host I/O. One that fails
   * because of an injected host failure is recorded as failed (never acknowledged); any other
   * failure is thrown.
   */
  async guestWrite(offset: number, data: Buffer, run: () => Promise<void>, what = 'write'): Promise<void> {
    const g: GuestWrite = { what, offset, data: Buffer.from(data), start: this.clock++, end: Infinity };
    this.guestWrites.push(g);
    try {
      await run();
    } catch (e) {
      if (!isInjected(e)) throw e;
      g.failed = true;
    }
    g.end = this.clock++;
  }

  /** A guest flush; one that fails because of an injected host failure acknowledges nothing. */
  async guestFlush(run: () => Promise<void>): Promise<void> {
    const f: GuestFlush = { start: this.clock++, end: Infinity };
    this.guestFlushes.push(f);
    try {
      await run();
    } catch (e) {
      if (!isInjected(e)) throw e;
      return;
    }
    f.end = this.clock++;
  }

  /** The run as text, one event a line (for debugging a failing state). */
  timeline(): string {
    const ev: Array<[number, string]> = [];
    for (const w of this.writes)
      ev.push([w.issued, `${w.kind} ${w.tag ?? ''} @${w.offset} +${w.data?.length ?? w.length ?? ''} done t${w.completed}`]);
    for (const b of this.barriers) ev.push([b.start, `SYNC done t${b.end}`]);
    for (const g of this.guestWrites) ev.push([g.start, `guest ${g.what} ${g.offset}+${g.data.length} done t${g.end}`]);
    for (const f of this.guestFlushes) ev.push([f.start, `guest flush done t${f.end}`]);
    return ev
      .sort((a, b) => a[0] - b[0])
      .map(([t, x]) => `t${t} ${x}`)
      .join('\n');
  }

  stop(): void {
    this.restore?.();
    this.restore = undefined;
  }

  /** The crash states of the run: per barrier epoch, prefixes, single drops and random subsets. */
  states(opts: { seed: number; perEpoch: number; allSubsetsUpTo: number }): CrashState[] {
    const r = rng(opts.seed);
    const ends = this.barriers.map((b) => b.end).sort((a, b) => a - b);
    const out: CrashState[] = [];
    // Epoch k: after the k-th barrier completed (k = -1: before any), before the next one completes.
    for (let k = -1; k < ends.length; k++) {
      const doneBy = k < 0 ? -1 : ends[k]!;
      const until = k + 1 < ends.length ? ends[k + 1]! : Infinity;
      let covered = -1; // writes completed before this time are durable
      for (const b of this.barriers) if (b.end <= doneBy) covered = Math.max(covered, b.start);
      const durable = this.writes.filter((w) => w.completed < covered);
      const maybe = this.writes.filter((w) => w.completed >= covered && w.issued < until);
      const picks: boolean[][] = [];
      const n = maybe.length;
      if (n <= opts.allSubsetsUpTo) {
        for (let m = 0; m < 2 ** n; m++) picks.push(maybe.map((_, i) => ((m >> i) & 1) === 1));
      } else {
        for (let p = 0; p <= n; p++) picks.push(maybe.map((_, i) => i < p)); // prefixes in issue order
        for (let d = 0; d < n; d++) picks.push(maybe.map((_, i) => i !== d)); // all but one
        for (let x = 0; x < opts.perEpoch; x++) picks.push(maybe.map(() => r() < 0.5));
      }
      const acked = this.ackedWrites(until);
      const issued = this.guestWrites.filter((g) => g.start < until);
      for (const p of picks) out.push({ epoch: k, durable, maybe, pick: p, acked, guest: issued });
    }
    return out;
  }

  /** Guest writes that completed before a flush() started which itself completed before `until`. */
  private ackedWrites(until: number): Set<GuestWrite> {
    let flushStart = -1;
    for (const f of this.guestFlushes) if (f.end < until) flushStart = Math.max(flushStart, f.start);
    return new Set(this.guestWrites.filter((g) => g.end < flushStart && !g.failed));
  }

  /** The bytes of the file in a crash state. */
  materialise(s: CrashState): Buffer {
    const writes = s.durable.concat(s.maybe.filter((_, i) => s.pick[i])).sort((a, b) => a.issued - b.issued);
    let img = Buffer.alloc(0);
    let len = 0;
    const ensure = (n: number): void => {
      if (n <= img.length) return;
      const bigger = Buffer.alloc(Math.max(n, img.length * 2));
      img.copy(bigger, 0, 0, len);
      img = bigger;
    };
    ensure(this.base.length);
    this.base.copy(img);
    len = this.base.length;
    for (const w of writes) {
      if (w.kind === 'truncate') {
        if (w.offset < len) img.fill(0, w.offset, len);
        ensure(w.offset);
        len = w.offset;
      } else if (w.kind === 'punch') {
        if (w.offset < len) img.fill(0, w.offset, Math.min(len, w.offset + w.length!));
      } else {
        ensure(w.offset + w.data!.length);
        if (w.offset > len) img.fill(0, len, w.offset);
        w.data!.copy(img, w.offset);
        len = Math.max(len, w.offset + w.data!.length);
      }
    }
    return img.subarray(0, len);
  }
}

export interface CrashState {
  epoch: number;
  durable: HostWrite[]; // on disk for sure
  maybe: HostWrite[]; // issued since the last barrier that covers them
  pick: boolean[]; // which of `maybe` reached the disk
  acked: Set<GuestWrite>;
  guest: GuestWrite[]; // guest writes issued before the crash
}

/**
 * The guest content a crash state must show: bytes written by an acknowledged write (the last
 * one), or the old content where no write was issued. Bytes under an unacknowledged write, or
 * under writes that ran concurrently with each other, may be either: they are returned as
 * `unchecked` ranges.
 */
export function expectedGuest(initial: Buffer, s: CrashState): { expected: Buffer; unchecked: Array<[number, number]> } {
  const expected = Buffer.from(initial);
  const unchecked: Array<[number, number]> = [];
  const ws = [...s.guest].sort((a, b) => a.start - b.start);
  for (const [i, w] of ws.entries()) {
    const end = w.offset + w.data.length;
    const concurrent = ws.some(
      (o, j) => j !== i && o.offset < end && w.offset < o.offset + o.data.length && o.start < w.end && w.start < o.end,
    );
    if (s.acked.has(w) && !concurrent) w.data.copy(expected, w.offset);
    else unchecked.push([w.offset, end]);
  }
  return { expected, unchecked };
}

export interface CheckResult {
  states: number; // distinct states checked
  bad: string[]; // one line per failing state
}

/**
 * Checks up to `budget` distinct crash states (identical files are checked once) with
 * `qemu-img check`, and reads each back through the driver against what it must show.
 */
export async function checkCrashStates(
  rec: CrashRecorder,
  states: CrashState[],
  o: { file: string; format: CrashFormat; initial: Buffer; budget: number; seed: number },
): Promise<CheckResult> {
  const r = rng(o.seed);
  const seen = new Set<string>();
  const bad: string[] = [];
  // Random order, so a budget smaller than the state count still samples every epoch.
  const order = states.map((s, i) => ({ s, k: r(), i })).sort((a, b) => a.k - b.k);
  let checked = 0;
  for (const { s } of order) {
    if (checked >= o.budget) break;
    const bytes = rec.materialise(s);
    const h = createHash('sha1').update(bytes).digest('hex');
    if (seen.has(h)) continue;
    seen.add(h);
    checked++;
    fs.writeFileSync(o.file, bytes);
    const what = `epoch ${s.epoch}, ${s.durable.length} durable writes + ${s.pick.filter((x) => x).length} of ${s.maybe.length} unsynced`;
    // VHDX: `qemu-img check -r all` replays a dirty log into the file; QEMU checks a copy, so the
    // read back below sees the crash state itself (our driver replays it in memory).
    const qfile = o.format === 'vhdx' ? `${o.file}.qemu` : o.file;
    if (qfile !== o.file) fs.writeFileSync(qfile, bytes);
    const problem = o.format === 'vpc' ? qemuReadProblem(o.file, o.initial, s) : qemuCheckProblem(qfile, o.format);
    if (problem) {
      bad.push(`${what}: ${problem}`);
      continue;
    }
    const mismatch = await readBackProblem(o.file, o.initial, s);
    if (mismatch) bad.push(`${what}: ${mismatch}`);
  }
  fs.rmSync(o.file, { force: true });
  fs.rmSync(`${o.file}.qemu`, { force: true });
  if (bad.length && process.env['CRASH_STATES_TIMELINE']) fs.writeFileSync(process.env['CRASH_STATES_TIMELINE'], rec.timeline());
  return { states: checked, bad };
}

/** Formats the crash states cover; `qemu-img check` judges all but vpc, which QEMU has no check for. */
export type CrashFormat = 'qcow2' | 'vmdk' | 'vdi' | 'vpc' | 'vhdx';

/**
 * vpc has no `qemu-img check`: QEMU must open the state and read every acknowledged byte, as
 * vdiskfs must (a footer lost in a torn append, a BAT pointing at unwritten data, would show).
 */
function qemuReadProblem(file: string, initial: Buffer, s: CrashState): string | null {
  const out = `${file}.qemu.raw`;
  try {
    execFileSync('qemu-img', ['convert', '-f', 'vpc', '-O', 'raw', file, out], { stdio: ['ignore', 'pipe', 'pipe'] });
    const got = fs.readFileSync(out);
    return sameAsExpected(got.subarray(0, initial.length), initial, s, 'QEMU');
  } catch (e) {
    const err = e as { stderr?: Buffer };
    return `qemu-img convert fails: ${String(err.stderr ?? e)
      .trim()
      .slice(0, 300)}`;
  } finally {
    fs.rmSync(out, { force: true });
  }
}

/** qcow2 incompatible feature bit 0: refcounts may be stale (lazy refcounts) and are rebuilt. */
function qcow2Dirty(file: string): boolean {
  const b = Buffer.alloc(8);
  const fd = fs.openSync(file, 'r');
  try {
    fs.readSync(fd, b, 0, 8, 72);
  } finally {
    fs.closeSync(fd);
  }
  const version = fs.readFileSync(file).readUInt32BE(4);
  return version >= 3 && (b[7]! & 1) === 1;
}

/** VHDX: the current header names a log (non-null LogGuid): QEMU replays it on a writable open only. */
function vhdxDirty(file: string): boolean {
  const fd = fs.openSync(file, 'r');
  try {
    const bufs = HEADER_OFFSETS.map((at) => {
      const b = Buffer.alloc(HEADER_SIZE);
      fs.readSync(fd, b, 0, HEADER_SIZE, at);
      return b;
    }) as [Buffer, Buffer];
    return !isNullGuid(currentHeader(file, bufs).header.logGuid);
  } catch {
    return false; // no valid header: plain check reports it
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Null when `qemu-img check` finds no corruption (leaks allowed). A dirty lazy-refcounts image
 * may have stale refcounts by design: it must come out of `-r all` (what QEMU runs on open) whole;
 * so must a VHDX whose header names a log (QEMU refuses it read-only until the log is replayed).
 */
function qemuCheckProblem(file: string, format: CrashFormat): string | null {
  const repair = (format === 'qcow2' && qcow2Dirty(file)) || (format === 'vhdx' && vhdxDirty(file));
  const args = ['check', '--output=json', '-f', format, ...(repair ? ['-r', 'all'] : []), file];
  let out: string;
  try {
    out = execFileSync('qemu-img', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    const err = e as { stdout?: string; stderr?: string; status?: number };
    // Exit 3: leaks only.
    if (err.status === 3 && err.stdout) out = err.stdout;
    else {
      const text = `${err.stdout ?? ''}${err.stderr ?? ''}`;
      const human = humanCheck(file, format);
      return `qemu-img check exit ${err.status}: ${text.trim().slice(0, 300)} ${human}`;
    }
  }
  const j = JSON.parse(out) as Record<string, unknown>;
  const corrupt = Number(j['corruptions'] ?? 0) + Number(j['check-errors'] ?? 0);
  return corrupt > 0 ? `qemu-img check: ${corrupt} corruptions/errors ${humanCheck(file, format)}` : null;
}

function humanCheck(file: string, format: string): string {
  try {
    return execFileSync('qemu-img', ['check', '-f', format, file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
      .split('\n')
      .filter((l) => /ERROR|Leak/.test(l))
      .slice(0, 3)
      .join(' | ');
  } catch (e) {
    const err = e as { stdout?: string; stderr?: string };
    return `${err.stdout ?? ''}${err.stderr ?? ''}`
      .split('\n')
      .filter((l) => /ERROR|rror/.test(l))
      .slice(0, 3)
      .join(' | ');
  }
}

async function readBackProblem(file: string, initial: Buffer, s: CrashState): Promise<string | null> {
  const img = await openImage(file, { writable: false });
  const got = Buffer.alloc(img.virtualSize);
  try {
    await img.read(0, got);
  } finally {
    await img.close();
  }
  return sameAsExpected(got, initial, s, 'vdiskfs');
}

/** Null when `got` shows what the state must (unchecked ranges aside); else the first difference. */
function sameAsExpected(got: Buffer, initial: Buffer, s: CrashState, reader: string): string | null {
  const { expected, unchecked } = expectedGuest(initial, s);
  for (const [a, b] of unchecked) expected.copy(got, a, a, b);
  if (got.equals(expected)) return null;
  let i = 0;
  while (got[i] === expected[i]) i++;
  const acked = [...s.acked].some((w) => i >= w.offset && i < w.offset + w.data.length);
  const near = s.guest
    .filter((w) => i >= w.offset && i < w.offset + w.data.length)
    .map((w) => `${w.what} ${w.offset}+${w.data.length} t${w.start}-${w.end}${s.acked.has(w) ? ' acked' : ''}`);
  return `${reader}: guest byte ${i} reads ${got[i]} instead of ${expected[i]} (${acked ? 'acknowledged by a flush' : 'old content no write touched'}; ${near.join(', ')})`;
}

/** Writers running at once: writes (often overlapping), zero writes, discards and flushes, seeded. */
export async function concurrentStorm(
  img: Image,
  rec: CrashRecorder,
  seed: number,
  writers: number,
  ops: number,
  unit: number,
  opts: { trySync?: boolean } = {},
): Promise<{ syncWrites: number }> {
  const r = rng(seed);
  let n = 0;
  let syncWrites = 0;
  // Hot spots make writers meet on the same clusters and tables.
  const hot = Array.from({ length: 6 }, () => Math.floor(r() * (img.virtualSize / unit - 8)) * unit);
  const one = async (w: number): Promise<void> => {
    for (let i = 0; i < ops; i++) {
      const k = r();
      if (k < 0.15) {
        await rec.guestFlush(() => img.flush());
        continue;
      }
      const small = r() < 0.5;
      const len = small ? 512 * (1 + Math.floor(r() * 9)) : unit * (1 + Math.floor(r() * 4)) - (r() < 0.5 ? 512 : 0);
      const base = r() < 0.6 ? hot[Math.floor(r() * hot.length)]! : Math.floor(r() * (img.virtualSize / unit)) * unit;
      const off = Math.min(img.virtualSize - len, base + 512 * Math.floor(r() * ((2 * unit) / 512)));
      if (k < 0.22) {
        await rec.guestWrite(off, Buffer.alloc(len), () => img.writeZeroes(off, len), 'zeroes');
      } else if (k < 0.3) {
        await rec.guestWrite(off, Buffer.alloc(len), () => img.discard(off, len), 'discard'); // reads as zeros after
      } else {
        const data = Buffer.alloc(len, ((w * 40 + n++) % 250) + 2);
        // trySync: Image.writeSync first (FUSE's synchronous path), the asynchronous write when it declines.
        const sync = opts.trySync === true && img.writeSync !== undefined && r() < 0.6;
        await rec.guestWrite(off, data, () => {
          if (!sync || !img.writeSync!(off, data)) return img.write(off, data);
          syncWrites++;
          return Promise.resolve();
        });
      }
    }
  };
  await Promise.all(Array.from({ length: writers }, (_, w) => one(w)));
  return { syncWrites };
}

/**
 * Rounds of concurrentStorm with host writes failing at random (`rec.faults`), a flush after
 * each; then the faults off and one more flush, so what a failed write-back left dirty goes
 * out. Returns how many guest writes failed (an injected failure of any other kind is a bug and
 * is thrown by concurrentStorm).
 */
export async function faultyStorm(
  img: Image,
  rec: CrashRecorder,
  o: { seed: number; rounds: number; writers: number; ops: number; unit: number; faults: HostFaults; trySync?: boolean },
): Promise<number> {
  rec.faults = o.faults;
  try {
    for (let round = 0; round < o.rounds; round++) {
      await concurrentStorm(img, rec, o.seed + round, o.writers + (round % 2), o.ops, o.unit, { trySync: o.trySync });
      await rec.guestFlush(() => img.flush());
    }
  } finally {
    rec.faults = undefined;
  }
  // Recorded like the others, so the crash states check what it acknowledged: a table a failed
  // write-back left forgotten (marked clean, never written) shows up as data lost here.
  await rec.guestFlush(() => img.flush());
  if (rec.guestFlushes[rec.guestFlushes.length - 1]!.end === Infinity) throw new Error('the flush after the faults ended failed');
  return rec.guestWrites.filter((g) => g.failed).length;
}
