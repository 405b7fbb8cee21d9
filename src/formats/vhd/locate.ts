/**
 * Finding the footer of a VHD and the parent of a differencing one.
 * Footer: the one at the end of the file; if that one is torn (a power cut while a block was
 * appended over it), the copy at offset 0 that every dynamic disk carries.
 * Parent: the names the child carries, in the order a Windows host tries them: the relative
 * locator (W2ru), the absolute one's file name (W2ku, as libvhdi does), the parent's Unicode name;
 * each goes through the confinement rule, and the file found must carry the parent Unique Id the
 * child names. A missing or mismatched parent is one line; the child is never served alone.
 */
import * as path from 'node:path';
import { VdiskError } from '../../io/errors';
import { HostFile } from '../../io/host-file';
import type { DynamicHeader } from './dynamic-header';
import { DISK_FIXED, FOOTER_BYTES, parseFooter, type VhdFooter } from './footer';

export async function readFooter(f: HostFile): Promise<{ footer: VhdFooter; fileSize: number }> {
  const fileSize = await f.size();
  if (fileSize < FOOTER_BYTES) throw VdiskError.corrupt(`${f.path}: too short for a VHD (${fileSize} bytes)`);
  const tail = Buffer.alloc(FOOTER_BYTES);
  await f.read(tail, fileSize - FOOTER_BYTES, 'header');
  const atEnd = parseFooter(tail, f.path);
  if (atEnd) return { footer: atEnd, fileSize };
  const head = Buffer.alloc(FOOTER_BYTES);
  await f.read(head, 0, 'header');
  const copy = parseFooter(head, f.path);
  if (copy && copy.diskType !== DISK_FIXED) return { footer: copy, fileSize };
  throw VdiskError.corrupt(`${f.path}: no valid VHD footer at the end of the file or at offset 0`);
}

/** The names a differencing child gives its parent, most trusted first. */
export async function parentNames(f: HostFile, h: DynamicHeader): Promise<Array<{ name: string; field: string }>> {
  const out: Array<{ name: string; field: string }> = [];
  const byCode = (c: string) => h.locators.filter((l) => l.code === c);
  for (const [code, field] of [
    ['W2ru', 'parent locator W2ru'],
    ['W2ku', 'parent locator W2ku'],
  ] as const) {
    for (const l of byCode(code)) {
      const buf = Buffer.alloc(l.length);
      await f.read(buf, l.offset, 'header');
      const name = buf.toString('utf16le').replace(/\0.*$/s, '');
      if (name) out.push({ name: windowsName(name, code === 'W2ku'), field });
    }
  }
  if (h.parentName) out.push({ name: windowsName(h.parentName, true), field: 'parent name' });
  return out;
}

/** A Windows path as a name here: relative ones keep their folders, absolute ones their file name. */
function windowsName(name: string, absolute: boolean): string {
  const parts = name.split(/[\\/]+/).filter((p) => p !== '' && p !== '.');
  if (absolute || /^[a-z]:$/i.test(parts[0] ?? '')) return parts[parts.length - 1] ?? name;
  return parts.join('/');
}

export interface FoundParent {
  file: string;
  footer: VhdFooter;
}

export async function findParent(
  file: string,
  f: HostFile,
  h: DynamicHeader,
  reach: (name: string, field: string) => Promise<string>,
): Promise<FoundParent> {
  const names = await parentNames(f, h);
  const want = h.parentUniqueId;
  let firstError: VdiskError | undefined;
  const tried: string[] = [];
  for (const { name, field } of names) {
    if (tried.includes(name)) continue;
    tried.push(name);
    let p: string;
    try {
      p = await reach(name, field);
    } catch (e) {
      // Outside the folder, not a file: that refusal is the answer, whatever else is tried.
      if (e instanceof VdiskError && e.code !== 'ENOENT') throw e;
      firstError ??= e as VdiskError;
      continue;
    }
    const pf = await HostFile.open(p, false);
    try {
      const { footer } = await readFooter(pf);
      if (!footer.uniqueId.equals(want))
        throw VdiskError.corrupt(
          `${file}: parent ${path.basename(p)} has Unique Id ${guid(footer.uniqueId)}, the child expects ${guid(want)}`,
        );
      return { file: p, footer };
    } finally {
      await pf.close();
    }
  }
  const shown = names[0]?.name ?? '(none)';
  throw new VdiskError(
    'ENOENT',
    `${file}: parent VHD '${shown}' not found${firstError ? '' : ' (the child names no parent)'}`,
    {},
    { cause: firstError },
  );
}

/** A VHD Unique Id as a GUID string (stored big-endian, as written). */
export function guid(u: Buffer): string {
  const h = u.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
