import type { CheckResult, OpenOptions } from '../types';
import { VmdkImage } from './vmdk-image';
import { SparseExtent } from './sparse-extent';
import { SECTOR } from './sparse-header';

/**
 * Consistency check like `qemu-img check`: grain tables and grains inside the file, no two
 * entries sharing a grain, primary and redundant tables equal; unreferenced grain space is a leak.
 */
export async function checkVmdk(file: string, opts: OpenOptions & { repair: boolean }): Promise<CheckResult> {
  const res: CheckResult = { errors: 0, leaks: 0, corruptions: 0, messages: [] };
  const img = await VmdkImage.open(file, { ...opts, writable: false });
  try {
    for (const ext of img.sparseExtents()) await checkExtent(ext, res);
  } finally {
    await img.close();
  }
  return res;
}

async function checkExtent(ext: SparseExtent, res: CheckResult): Promise<void> {
  const fileSize = await ext.file.size();
  const G = ext.grainBytes;
  const used: Array<[number, number]> = [];
  const say = (kind: 'errors' | 'corruptions', msg: string) => {
    res[kind]++;
    if (res.messages.length < 100) res.messages.push(`${ext.fileName}: ${msg}`);
  };
  for (let t = 0; t < ext.tableCount; t++) {
    const at = ext.gd[t]! * SECTOR;
    if (at === 0) continue;
    if (at + ext.gtBytes > fileSize) {
      say('corruptions', `grain table ${t} at ${at} lies past the end of the file`);
      continue;
    }
    used.push([at, ext.gtBytes]);
    const rAt = ext.rgd ? ext.rgd[t]! * SECTOR : 0;
    if (rAt) used.push([rAt, ext.gtBytes]);
    const table = await ext.cache.get(t);
    if (rAt && rAt + ext.gtBytes <= fileSize) {
      const r = Buffer.alloc(ext.gtBytes);
      await ext.file.read(r, rAt, 'gt');
      if (!r.equals(table.buf)) say('errors', `grain table ${t} and its redundant copy differ`);
    }
    for (let i = 0; i < ext.gtEntries; i++) {
      const e = table.buf.readUInt32LE(i * 4);
      if (e === 0 || ext.isZeroGte(e)) continue;
      const g = t * ext.gtEntries + i;
      const host = e * SECTOR;
      const len = ext.compressed ? SECTOR : G;
      if (host + len > fileSize) say('corruptions', `grain ${g} at ${host} points past the end of the file`);
      else used.push([host, len]);
    }
  }
  used.sort((a, b) => a[0] - b[0]);
  let prevEnd = 0;
  for (const [at, len] of used) {
    if (at < prevEnd && !ext.compressed) say('corruptions', `host range ${at}+${len} is used twice`);
    prevEnd = Math.max(prevEnd, at + len);
  }
  if (!ext.compressed) {
    const dataStart = ext.header.overHead * SECTOR;
    let inData = 0;
    for (const [at, len] of used) if (at >= dataStart) inData += len;
    const leaked = Math.max(0, fileSize - dataStart - inData);
    if (leaked >= G) {
      res.leaks += Math.floor(leaked / G);
      res.messages.push(`${ext.fileName}: ${Math.floor(leaked / G)} grain(s) of space not referenced (leaked)`);
    }
  }
}
