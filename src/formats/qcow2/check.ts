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
  readStoredRefcounts,
  walkReferences,
  writeFreshRefcounts,
  type CopiedProblem,
} from './refcount-walk';
import { withCopied } from './table-entry';

/** `progress`: how far the check got, 0..1 (a repair's second check counts as its last part). */
export async function checkQcow2(path: string, repair: boolean, progress?: (fraction: number) => void): Promise<CheckResult> {
  const first = await checkOnce(path, repair, progress);
  if (!repair || first.leaks + first.corruptions === 0) return first;
  const after = await checkOnce(path, false);
  return {
    ...after,
    repaired: first.leaks + first.corruptions,
    leaksFixed: first.leaks,
    corruptionsFixed: first.corruptions,
    messages: [...first.messages, ...after.messages],
  };
}

async function checkOnce(path: string, repair: boolean, progress?: (fraction: number) => void): Promise<CheckResult> {
  // The walk reads every table once, the COPIED pass the active ones again: about 2/3 and 1/3.
  const part = (from: number, share: number) => (progress ? (f: number) => progress(from + f * share) : undefined);
  const file = await HostFile.open(path, repair);
  try {
    const meta = await readMeta(file);
    const h = meta.header;
    const cs = 2 ** h.clusterBits;
    const l1 = Buffer.alloc(h.l1Size * 8);
    await file.read(l1, h.l1TableOffset, 'check');
    const snaps = await readSnapshotTable(file, meta);
    // Counted references; the refcount structures are added last (and taken out for a repair).
    const walk = await walkReferences(file, meta, l1, snaps, part(0, 0.65));
    const refs = walk.counts;
    const structures = await countRefcountStructures(file, meta, refs);
    const stored = await readStoredRefcounts(file, meta, refs.length);
    const messages = [...walk.messages, ...structures.shared.slice(0, 100)];
    let leaks = 0;
    let corruptions = walk.corruptions + structures.shared.length;
    if (h.version >= 3) {
      snaps.snapshots.forEach((s, i) => {
        if (s.extraDataSize >= MIN_V3_EXTRA_DATA) return;
        corruptions++;
        if (messages.length < 100) messages.push(`ERROR snapshot table entry ${i} is incomplete`);
      });
    }
    let highest = 0; // as QEMU: the last cluster with a stored or a counted reference
    for (let c = 0; c < refs.length; c++) {
      const s = stored.get(c);
      const r = refs.get(c);
      if (s || r) highest = c;
      if (s === r) continue;
      if (s < r) corruptions++;
      else leaks++;
      if (messages.length < 100) messages.push(`${s < r ? 'ERROR' : 'Leaked'} cluster ${c} refcount=${s} reference=${r}`);
    }
    await copiedProblems(
      file,
      meta,
      l1,
      (c) => stored.get(c),
      (p, c) => {
        corruptions++;
        if (messages.length < 100) messages.push(`ERROR OFLAG_COPIED ${p.what}: refcount=${stored.get(c)}`);
      },
      part(0.65, 0.35),
    );
    if (repair && leaks + corruptions > 0) {
      for (const c of structures.added) refs.add(c, -1); // the old refcount structures become free space
      await writeFreshRefcounts(file, meta, refs);
      // COPIED must say "refcount is exactly 1" under the rebuilt refcounts.
      const word = Buffer.alloc(4);
      const fixes: CopiedProblem[] = [];
      await copiedProblems(
        file,
        meta,
        l1,
        (c) => refs.get(c),
        (p) => fixes.push(p),
      );
      for (const x of fixes) {
        await file.read(word, x.at, 'check');
        word.writeUInt32BE(withCopied(word.readUInt32BE(0), !x.copied));
        await file.write(word, x.at, x.what.startsWith('L1') ? 'l1' : 'l2');
      }
      const b = incompatiblePatch(h.incompatible & ~(INCOMPAT_DIRTY | INCOMPAT_CORRUPT));
      if (h.version === 3) await file.write(b.bytes, b.at, 'header');
      await file.datasync('header');
    }
    const stats = {
      totalClusters: Math.ceil(h.size / 2 ** h.clusterBits),
      allocatedClusters: walk.frag.allocated,
      fragmentedClusters: walk.frag.fragmented,
      compressedClusters: walk.frag.compressed,
      imageEndOffset: (highest + 1) * cs,
    };
    return { errors: 0, leaks, corruptions, messages, stats };
  } finally {
    await file.close();
  }
}
