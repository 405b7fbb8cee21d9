/**
 * Finding a differencing disk's parent ([MS-VHDX] 2.6.2.6): the parent locator's relative_path
 * first, then the file names of absolute_win32_path and volume_path, each looked for beside the
 * child through the confinement rule (OpenOptions.reach). The parent must carry the DataWriteGuid
 * the child recorded (parent_linkage, or parent_linkage2): a parent written since is refused,
 * and a child is never served without its parent.
 */
import * as path from 'node:path';
import { VdiskError, isVdiskError } from '../../io/errors';
import type { Image, OpenOptions } from '../types';
import { guidText } from './guid';
import type { VhdxMetadata } from './metadata';
import { VHDX_LOCATOR_TYPE } from './parent-locator';

/** A Windows path as a name to look for beside the child: relative paths keep their folders. */
export function parentNames(entries: Map<string, string>): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  const rel = entries.get('relative_path');
  if (rel) out.push([rel.replace(/\\/g, '/').replace(/^(\.\/)+/, ''), 'parent locator relative_path']);
  for (const key of ['absolute_win32_path', 'volume_path']) {
    const v = entries.get(key);
    if (!v) continue;
    const base = v.split(/[\\/]/).pop();
    if (base && !out.some(([n]) => n === base)) out.push([base, `parent locator ${key} (file name)`]);
  }
  return out;
}

/** The key of a GUID as a locator writes it: lower case, without braces. */
function guidKey(v: string | undefined): string | undefined {
  return v?.replace(/[{}]/g, '').trim().toLowerCase();
}

/** Where the locator's parent file is (first name that exists), without opening it. */
export async function findParent(file: string, meta: VhdxMetadata, reach: OpenOptions['reach']): Promise<string> {
  const loc = meta.parentLocator!;
  if (loc.type !== guidText(VHDX_LOCATOR_TYPE))
    throw VdiskError.unsupported(`${file}: parent locator type ${loc.type} is not the VHDX one`);
  const names = parentNames(loc.entries);
  if (names.length === 0) throw VdiskError.corrupt(`${file}: parent locator names no parent file`);
  for (const [name, field] of names) {
    try {
      return await reach(name, field);
    } catch (e) {
      if (isVdiskError(e) && e.code === 'ENOENT') continue;
      throw e;
    }
  }
  throw new VdiskError(
    'ENOENT',
    `${file}: parent ${names.map(([n]) => `'${n}'`).join(' or ')} not found beside it (differencing disk left out)`,
  );
}

export async function openParent(file: string, meta: VhdxMetadata, opts: OpenOptions): Promise<{ parent: Image; parentFile: string }> {
  const parentFile = await findParent(file, meta, opts.reach);
  const parent = await opts.openBacking(parentFile, 'vhdx');
  const have = (parent as { dataWriteGuid?: string }).dataWriteGuid;
  const want = [guidKey(meta.parentLocator!.entries.get('parent_linkage')), guidKey(meta.parentLocator!.entries.get('parent_linkage2'))];
  if (!have || !want.includes(have)) {
    await parent.close().catch(() => {});
    throw VdiskError.corrupt(
      `${file}: parent ${path.basename(parentFile)} has DataWriteGuid {${have ?? '?'}}, the child expects {${want[0] ?? '?'}} (the parent changed since the child was made)`,
    );
  }
  return { parent, parentFile };
}
