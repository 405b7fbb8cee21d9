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
import { countRefcountStructures, readStoredRefcounts, walkReferences, writeFreshRefcounts } from './refcount-walk';
import { withCopied } from './table-entry';

export async function checkQcow2(path: string, repair: boolean): Promise<CheckResult> {
  const first = await checkOnce(path, repair);
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

async function checkOnce(path: string, repair: boolean): Promise<CheckResult> {
  const file = await HostFile.open(path, repair);
  try {
    const meta = await readMeta(file);
    const h = meta.header;
    const l1 = Buffer.alloc(h.l1Size * 8);
    await file.read(l1, h.l1TableOffset, 'check');
    const snaps = await readSnapshotTable(file, meta);
    const walk = await walkReferences(file, meta, l1, snaps);
    const refs = Uint32Array.from(walk.counts);
    const sharedRefblocks = await countRefcountStructures(file, meta, refs);
    const stored = await readStoredRefcounts(file, meta, refs.length);
    const messages = [...walk.messages, ...sharedRefblocks.slice(0, 100)];
    let leaks = 0;
    let corruptions = walk.corruptions + sharedRefblocks.length;
    if (h.version >= 3) {
      snaps.snapshots.forEach((s, i) => {
        if (s.extraDataSize >= MIN_V3_EXTRA_DATA) return;
        corruptions++;
        if (messages.length < 100) messages.push(`ERROR snapshot table entry ${i} is incomplete`);
      });
    }
    for (let c = 0; c < refs.length; c++) {
      const s = stored[c]!;
      const r = refs[c]!;
      if (s === r) continue;
      if (s < r) corruptions++;
      else leaks++;
      if (messages.length < 100) messages.push(`${s < r ? 'ERROR' : 'Leaked'} cluster ${c} refcount=${s} reference=${r}`);
    }
    const wrongCopied: typeof walk.copiedChecks = [];
    for (const x of walk.copiedChecks) {
      const c = Math.floor(x.host / 2 ** h.clusterBits);
      const want = stored[c] === 1;
      if (want !== x.copied) {
        corruptions++;
        if (messages.length < 100) messages.push(`ERROR OFLAG_COPIED ${x.what}: refcount=${stored[c]}`);
      }
      if ((walk.counts[c] === 1) !== x.copied) wrongCopied.push(x);
    }
    if (repair && leaks + corruptions > 0) {
      await writeFreshRefcounts(file, meta, walk.counts);
      // COPIED must say "refcount is exactly 1" under the rebuilt refcounts.
      const word = Buffer.alloc(4);
      for (const x of wrongCopied) {
        await file.read(word, x.at, 'check');
        word.writeUInt32BE(withCopied(word.readUInt32BE(0), !x.copied));
        await file.write(word, x.at, x.what.startsWith('L1') ? 'l1' : 'l2');
      }
      const b = incompatiblePatch(h.incompatible & ~(INCOMPAT_DIRTY | INCOMPAT_CORRUPT));
      if (h.version === 3) await file.write(b.bytes, b.at, 'header');
      await file.datasync('header');
    }
    let highest = 0; // as QEMU: the last cluster with a stored or a counted reference
    for (let c = Math.max(refs.length, stored.length) - 1; c > 0; c--)
      if (refs[c] || stored[c]) {
        highest = c;
        break;
      }
    const stats = {
      totalClusters: Math.ceil(h.size / 2 ** h.clusterBits),
      allocatedClusters: walk.frag.allocated,
      fragmentedClusters: walk.frag.fragmented,
      compressedClusters: walk.frag.compressed,
      imageEndOffset: (highest + 1) * 2 ** h.clusterBits,
    };
    return { errors: 0, leaks, corruptions, messages, stats };
  } finally {
    await file.close();
  }
}
