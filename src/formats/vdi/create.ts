/**
 * `qemu-img create -f vdi` (options: static=on|off) and, beyond QEMU, a differencing child of a
 * VDI (`-b parent.vdi`): type diff, linked to the parent by its UUID, as VirtualBox links snapshots.
 * The layout is QEMU's: header at 0, block map at 512, data right after the map; 1 MiB blocks.
 */
import { VdiskError } from '../../io/errors';
import { HostFile } from '../../io/host-file';
import type { CreateOptions } from '../types';
import { ENTRY_FREE, HEADER_BYTES, MAX_BLOCKS, newUuid, parseHeader, SECTOR, serializeHeader, type ImageType } from './header';

const BLOCK = 1 << 20;

export async function createVdi(file: string, opts: CreateOptions): Promise<void> {
  const o = opts.options;
  for (const k of Object.keys(o)) if (k !== 'static') throw VdiskError.invalid(`vdi: unknown option '${k}' (static)`);
  const isStatic = onOff(o['static'], 'static');
  let size = Math.ceil(opts.size / SECTOR) * SECTOR;
  let type: ImageType = isStatic ? 2 : 1;
  let uuidLinkage: Buffer = Buffer.alloc(16);
  let uuidParentModify: Buffer = Buffer.alloc(16);
  if (opts.backingFile) {
    if (isStatic) throw VdiskError.invalid('vdi: a differencing image cannot be static');
    if (opts.backingFormat && opts.backingFormat !== 'vdi')
      throw VdiskError.invalid(`vdi: the parent of a VDI must be a VDI, not ${opts.backingFormat}`);
    const parentPath = await opts.reach(opts.backingFile, 'parent');
    const f = await HostFile.open(parentPath, false);
    try {
      const head = Buffer.alloc(HEADER_BYTES);
      await f.read(head, 0, 'header');
      const ph = parseHeader(head, parentPath);
      uuidLinkage = ph.uuidCreate;
      uuidParentModify = ph.uuidModify;
      if (opts.size !== 0 && opts.size !== ph.diskSize)
        throw VdiskError.invalid(`vdi: a child has its parent's size (${ph.diskSize}), not ${opts.size}`);
      size = ph.diskSize;
    } finally {
      await f.close();
    }
    type = 4;
  }
  const blocks = Math.ceil(size / BLOCK);
  if (blocks > MAX_BLOCKS) throw VdiskError.invalid(`vdi: ${size} bytes is more than ${MAX_BLOCKS} blocks of 1 MiB`);
  const offsetBmap = HEADER_BYTES;
  const mapBytes = Math.ceil((blocks * 4) / SECTOR) * SECTOR;
  const offsetData = offsetBmap + mapBytes;
  const map = Buffer.alloc(mapBytes, 0xff);
  for (let b = 0; b < blocks; b++) map.writeUInt32LE(isStatic ? b : ENTRY_FREE, b * 4);
  const uuid = newUuid();
  const header = serializeHeader({
    type,
    offsetBmap,
    offsetData,
    diskSize: size,
    blockSize: BLOCK,
    blockExtra: 0,
    blocks,
    blocksAllocated: isStatic ? blocks : 0,
    uuidCreate: uuid,
    uuidModify: newUuid(),
    uuidLinkage,
    uuidParentModify,
  });
  const f = await HostFile.create(file);
  try {
    await f.write([header, map], 0, 'header');
    await f.truncate(offsetData + (isStatic ? blocks * BLOCK : 0));
    await f.datasync('flush');
  } finally {
    await f.close();
  }
}

function onOff(v: string | undefined, name: string): boolean {
  if (v === undefined || v === 'off' || v === 'false') return false;
  if (v === 'on' || v === 'true') return true;
  throw VdiskError.invalid(`vdi: ${name}=${v}: expected on or off`);
}
