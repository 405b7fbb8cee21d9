import * as path from 'node:path';
import { VdiskError } from '../../io/errors';
import { HostFile } from '../../io/host-file';
import * as hdr from './sparse-header';
import { Descriptor, MAX_DESCRIPTOR_BYTES, looksLikeDescriptor } from './descriptor';

/** COWD: the ESX 2.x / vmfsSparse delta extent magic ('COWD' as written on disk). */
export const COWD_MAGIC = 'COWD';

/**
 * Where an image's descriptor lives and what it says, found without opening extents:
 * used by open, auxiliaryFiles and backingFileOf alike.
 */
export interface Layout {
  /** The descriptor, or null for a bare sparse extent without one. */
  descriptor: Descriptor | null;
  /** True when the descriptor sits inside a KDMV file (monolithicSparse / streamOptimized). */
  embedded: boolean;
  /** Embedded descriptor location (bytes) and room (bytes). */
  descriptorAt: number;
  descriptorRoom: number;
  /** The KDMV header of an embedded-descriptor file. */
  header?: hdr.SparseHeader;
}

export async function readLayout(file: string): Promise<Layout> {
  const fh = await HostFile.open(file, false); // never blocks, regular files only
  try {
    const st = { size: await fh.size() };
    const head = Buffer.alloc(Math.min(hdr.SIZE, st.size));
    await fh.read(head, 0, 'header');
    const magic = head.toString('latin1', 0, 4);
    if (magic === COWD_MAGIC) throw VdiskError.unsupported(`${file}: a bare COWD (vmfsSparse) extent; open the descriptor that names it`);
    if (head.length >= 4 && head.readUInt32LE(0) === hdr.MAGIC) {
      if (head.length < 80) throw VdiskError.corrupt(`${file}: sparse extent header truncated`);
      const h = hdr.parse(head);
      if (h.descriptorOffset === 0 || h.descriptorSize === 0)
        return { descriptor: null, embedded: true, descriptorAt: 0, descriptorRoom: 0, header: h };
      const at = h.descriptorOffset * hdr.SECTOR;
      const room = h.descriptorSize * hdr.SECTOR;
      if (room > MAX_DESCRIPTOR_BYTES) throw VdiskError.corrupt(`${file}: embedded descriptor of ${room} bytes is too big`);
      if (at + room > st.size) throw VdiskError.corrupt(`${file}: embedded descriptor lies past the end of the file`);
      const buf = Buffer.alloc(room);
      await fh.read(buf, at, 'descriptor');
      const text = buf.toString('latin1');
      const end = text.indexOf('\0');
      const body = end < 0 ? text : text.slice(0, end);
      if (body.trim() === '') return { descriptor: null, embedded: true, descriptorAt: at, descriptorRoom: room, header: h };
      return { descriptor: Descriptor.parse(body), embedded: true, descriptorAt: at, descriptorRoom: room, header: h };
    }
    if (st.size > MAX_DESCRIPTOR_BYTES) throw VdiskError.corrupt(`${file}: not a VMDK (no sparse header, too big for a descriptor)`);
    const buf = Buffer.alloc(st.size);
    await fh.read(buf, 0, 'descriptor');
    const text = buf.toString('latin1');
    if (!looksLikeDescriptor(text)) throw VdiskError.corrupt(`${file}: not a VMDK descriptor`);
    return { descriptor: Descriptor.parse(text), embedded: false, descriptorAt: 0, descriptorRoom: 0 };
  } finally {
    await fh.close();
  }
}

/** Extent files a descriptor file names (absolute); an embedded descriptor's extent is the file itself. */
export function extentPaths(file: string, layout: Layout): string[] {
  if (layout.embedded || !layout.descriptor) return [];
  const dir = path.dirname(file);
  return layout.descriptor.extents.filter((e) => e.fileName !== undefined && e.type !== 'ZERO').map((e) => path.resolve(dir, e.fileName!));
}

export function parentPath(file: string, layout: Layout): string | undefined {
  const hint = layout.descriptor?.parentFileNameHint;
  if (!hint) return undefined;
  return path.resolve(path.dirname(file), hint);
}
