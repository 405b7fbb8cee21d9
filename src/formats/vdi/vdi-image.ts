/**
 * Opening a VDI: header, block map, and for a differencing image (type diff) its parent, found by
 * UUID among the .vdi files of the same folder (VirtualBox keeps snapshots in `Snapshots/` and
 * links them by UUID only; the folder scan looks beside the child first, then one level up).
 * The bytes move through the shared block engine (../blocks/block-image.ts).
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import createDebug from 'debug';
import { VdiskError } from '../../io/errors';
import { HostFile } from '../../io/host-file';
import { BlockImage } from '../blocks/block-image';
import type { Image, ImageInfo, OpenOptions } from '../types';
import { VdiBlockMap } from './block-map';
import { ENTRY_FREE, ENTRY_ZERO, formatUuid, HEADER_BYTES, IMAGE_TYPES, looksLikeVdi, parseHeader, type VdiHeader } from './header';

const log = createDebug('vdiskfs:vdi');

/** The header region [0, offBlocks) is kept whole (and rewritten with the map) up to this size. */
const HEADER_REGION_MAX = 1 << 20;

export interface VdiFile {
  header: VdiHeader;
  map: VdiBlockMap;
}

/** Reads and checks header and block map; duplicate slots or entries past the map are refused. */
export async function readVdi(
  f: HostFile,
): Promise<{ header: VdiHeader; region: Buffer; map: Buffer; problems: string[]; fileSize: number }> {
  const head = Buffer.alloc(HEADER_BYTES);
  await f.read(head, 0, 'header');
  const header = parseHeader(head, f.path);
  const size = await f.size();
  const mapBytes = header.blocks * 4;
  if (header.offsetBmap + mapBytes > size)
    throw VdiskError.corrupt(`${f.path}: VDI block map (${mapBytes} bytes at ${header.offsetBmap}) runs past the end of the file`);
  const region = header.offsetBmap <= HEADER_REGION_MAX ? Buffer.alloc(header.offsetBmap) : head;
  if (region !== head) await f.read(region, 0, 'header');
  const map = Buffer.alloc(mapBytes);
  await f.read(map, header.offsetBmap, 'bat');
  return { header, region, map, problems: mapProblems(header, map), fileSize: size };
}

/** What is wrong with a block map: entries past the map, slots used twice (qemu-img check's words). */
export function mapProblems(h: VdiHeader, map: Buffer): string[] {
  const problems: string[] = [];
  const owner = new Int32Array(h.blocks).fill(-1);
  for (let b = 0; b < h.blocks; b++) {
    const e = map.readUInt32LE(b * 4);
    if (e === ENTRY_FREE || e === ENTRY_ZERO) continue;
    if (e >= h.blocks) problems.push(`block ${b}: slot ${e} is past the ${h.blocks} slots of the image`);
    else if (owner[e] !== -1) problems.push(`block ${b}: slot ${e} is also used by block ${owner[e]}`);
    else owner[e] = b;
    if (problems.length > 20) break;
  }
  return problems;
}

export async function openVdi(file: string, opts: OpenOptions): Promise<Image> {
  const f = await HostFile.open(file, opts.writable);
  let parent: Image | undefined;
  try {
    const { header, region, map, problems, fileSize } = await readVdi(f);
    if (problems.length) throw VdiskError.corrupt(`${file}: VDI block map is inconsistent: ${problems[0]}`);
    if (header.type === 3) throw VdiskError.unsupported(`${file}: VDI 'undo' images are not supported`);
    const table = new VdiBlockMap(f, header, region, map, fileSize);
    let parentFile: string | undefined;
    if (header.type === 4) {
      parentFile = await findParent(file, header, opts);
      parent = await opts.openBacking(parentFile, 'vdi');
      if (parent.virtualSize < header.diskSize)
        log('%s: parent %s is smaller (%d < %d)', file, parentFile, parent.virtualSize, header.diskSize);
    }
    log('open %s: %s, %d blocks of %d, parent %s', file, IMAGE_TYPES[header.type], header.blocks, header.blockSize, parentFile ?? '-');
    return new BlockImage({
      format: 'vdi',
      path: file,
      table,
      parent,
      readOnly: !opts.writable,
      info: (img) => vdiInfo(img, header, parentFile, parent),
      close: () => f.close(),
    });
  } catch (e) {
    await parent?.close().catch(() => {});
    await f.close().catch(() => {});
    throw e;
  }
}

/** The UUIDs of a VDI file, or undefined when it is not one (probing the folder for a parent). */
async function uuidsOf(p: string): Promise<VdiHeader | undefined> {
  const f = await HostFile.open(p, false);
  try {
    const head = Buffer.alloc(HEADER_BYTES);
    await f.read(head, 0, 'probe');
    return looksLikeVdi(head) ? parseHeader(head, p) : undefined;
  } catch {
    return undefined;
  } finally {
    await f.close();
  }
}

/**
 * The parent of a differencing VDI: the .vdi whose uuidCreate is the child's uuidLinkage, in the
 * child's folder or its parent folder (VirtualBox: `Snapshots/{uuid}.vdi` beside the base disk).
 * Every candidate is reached through the confinement rule before it is opened.
 */
export async function findParent(file: string, header: VdiHeader, opts: Pick<OpenOptions, 'reach'>): Promise<string> {
  const want = header.uuidLinkage;
  const dir = path.dirname(file);
  for (const rel of ['.', '..']) {
    const names = await fs.readdir(path.join(dir, rel)).catch(() => [] as string[]);
    for (const name of names.sort()) {
      if (!name.toLowerCase().endsWith('.vdi')) continue;
      const cand = await opts.reach(path.join(rel, name), 'parent').catch(() => undefined);
      if (!cand || cand === file) continue;
      const h = await uuidsOf(cand);
      if (h && h.uuidCreate.equals(want)) return cand;
    }
  }
  throw new VdiskError('ENOENT', `${file}: parent VDI {${formatUuid(want)}} not found among the .vdi files beside it`);
}

async function vdiInfo(img: BlockImage, h: VdiHeader, parentFile: string | undefined, parent: Image | undefined): Promise<ImageInfo> {
  const st = await fs.stat(img.path);
  return {
    filename: img.path,
    format: 'vdi',
    'virtual-size': img.virtualSize,
    'actual-size': st.blocks * 512,
    'cluster-size': h.blockSize,
    ...(parentFile
      ? { 'backing-filename': path.basename(parentFile), 'full-backing-filename': parentFile, 'backing-filename-format': 'vdi' }
      : {}),
    'format-specific': {
      type: 'vdi',
      data: {
        'image-type': IMAGE_TYPES[h.type],
        uuid: formatUuid(h.uuidCreate),
        ...(h.type === 4 ? { 'parent-uuid': formatUuid(h.uuidLinkage) } : {}),
        'blocks-allocated': img.table instanceof VdiBlockMap ? img.table.allocatedCount() : 0,
      },
    },
    ...(parent ? { 'backing-image': await parent.info() } : {}),
  };
}
