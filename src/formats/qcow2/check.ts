/**
 * `qemu-img check` for qcow2: counts every reference from first principles, compares with the
 * stored refcounts (stored < referenced: corruption; stored > referenced: leak) and checks the
 * active layer's COPIED flags. Repair writes fresh refcount structures (like `-r all`).
 */
import { HostFile } from '../../io/host-file';
import type { CheckResult } from '../types';
import { INCOMPAT_CORRUPT, INCOMPAT_DIRTY, incompatiblePatch } from './header';
import { readMeta, readSnapshotTable } from './meta';
import { MIN_V3_EXTRA_DATA } from './snapshot-table';
import {
  copiedProblems,
  countRefcountStructures,
  passProgress,
  pastEndError,
  readStoredRefcounts,
  rebuildRefcounts,
  walkReferences,
  walkWindows,
} from './refcount-walk';

/** `progress`: how far the check got, 0..1 (a repair's second check counts as its last part). */
export async function checkQcow2(
  path: string,
  repair: boolean,
  progress?: (fraction: number, detail?: string) => void,
): Promise<CheckResult> {
  const first = await checkOnce(path, repair, progress);
  if (!repair) return first;
  if (first.leaks + first.corruptions === 0) {
    // Nothing to fix, but a repair cut off after its new refcounts were in place left the bits
    // set: consistent now, so they go (as qemu-img check -r does).
    await markConsistent(path);
    return first;
  }
  const after = await checkOnce(path, false);
  // Only an image with nothing corrupt left loses its corrupt bit (the driver opens a corrupt one read-only).
  if (after.corruptions === 0) await markConsistent(path);
  return {
    ...after,
    repaired: first.leaks + first.corruptions,
    leaksFixed: first.leaks,
    corruptionsFixed: first.corruptions,
    messages: [...first.messages, ...after.messages],
  };
}

async function checkOnce(path: string, repair: boolean, progress?: (fraction: number, detail?: string) => void): Promise<CheckResult> {
  const file = await HostFile.open(path, repair);
  try {
    const meta = await readMeta(file);
    const h = meta.header;
    const cs = 2 ** h.clusterBits;
    const l1 = Buffer.alloc(h.l1Size * 8);
    await file.read(l1, h.l1TableOffset, 'check');
    const snaps = await readSnapshotTable(file, meta);
    const messages: string[] = [];
    let leaks = 0;
    let corruptions = 0;
    let frag = { allocated: 0, fragmented: 0, compressed: 0 };
    let beyondEnd = 0; // references past the end of the file (no rebuild over them)
    let highest = 0; // as QEMU: the last cluster with a stored or a counted reference
    const say = (m: string) => void (messages.length < 100 && messages.push(m));
    if (h.version >= 3) {
      snaps.snapshots.forEach((s, i) => {
        if (s.extraDataSize >= MIN_V3_EXTRA_DATA) return;
        corruptions++;
        say(`ERROR snapshot table entry ${i} is incomplete`);
      });
    }
    // One pass per window of host clusters (one window unless the file is bigger than the memory
    // budget): references counted in the window, the refcount structures added last, compared
    // with the stored refcounts, then the COPIED flags of entries pointing into the window.
    // Without a repair, the walk is about 2/3 of the work and the COPIED pass 1/3.
    const share = repair ? 0.5 : 1;
    for (const w of walkWindows(meta)) {
      const walk = await walkReferences(file, meta, l1, snaps, passProgress(progress, w, 0, 0.65 * share), w);
      for (const m of walk.messages) say(m);
      corruptions += walk.corruptions;
      if (w.pass === 1) {
        frag = walk.frag;
        beyondEnd = walk.beyondEnd;
      }
      const refs = walk.counts;
      const structures = await countRefcountStructures(file, meta, refs, w);
      for (const m of structures.shared) say(m);
      corruptions += structures.shared.length;
      const stored = await readStoredRefcounts(file, meta, w);
      for (let i = 0; i < w.count; i++) {
        const s = stored.get(i);
        const r = refs.get(i);
        if (s || r) highest = w.first + i;
        if (s === r) continue;
        if (s < r) corruptions++;
        else leaks++;
        say(`${s < r ? 'ERROR' : 'Leaked'} cluster ${w.first + i} refcount=${s} reference=${r}`);
      }
      await copiedProblems(
        file,
        meta,
        l1,
        (c) => (c >= w.first && c < w.first + w.count ? stored.get(c - w.first) : undefined),
        (p, c) => {
          corruptions++;
          say(`ERROR OFLAG_COPIED ${p.what}: refcount=${stored.get(c - w.first)}`);
        },
        passProgress(progress, w, 0.65 * share, 0.35 * share),
      );
    }
    if (repair && leaks + corruptions > 0) {
      if (beyondEnd > 0) {
        // The rebuild would put its structures under those references: not done, nothing written.
        say(`ERROR ${pastEndError(path, beyondEnd).message}`);
      } else {
        // Counted again, window by window, as the fresh structures are written (see rebuildRefcounts).
        await rebuildRefcounts(file, meta, l1, snaps, {
          fixCopied: true,
          ...(progress ? { progress: (f: number, d?: string) => progress(0.5 + f / 2, d) } : {}),
        });
      }
    }
    const stats = {
      totalClusters: Math.ceil(h.size / 2 ** h.clusterBits),
      allocatedClusters: frag.allocated,
      fragmentedClusters: frag.fragmented,
      compressedClusters: frag.compressed,
      imageEndOffset: (highest + 1) * cs,
    };
    return { errors: 0, leaks, corruptions, messages, stats };
  } finally {
    await file.close();
  }
}

/** Clears the dirty and corrupt bits, durably, when set (the refcounts are known consistent). */
async function markConsistent(path: string): Promise<void> {
  const file = await HostFile.open(path, true);
  try {
    const h = (await readMeta(file)).header;
    const bits = INCOMPAT_DIRTY | INCOMPAT_CORRUPT;
    if (h.version !== 3 || (h.incompatible & bits) === 0n) return;
    const b = incompatiblePatch(h.incompatible & ~bits);
    await file.write(b.bytes, b.at, 'header');
    await file.datasync('header');
  } finally {
    await file.close();
  }
}
