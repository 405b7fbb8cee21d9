import { HostFile } from '../../io/host-file';
import type { FormatDriver } from '../types';
import { RawImage } from './raw-image';

export { RawImage };

/** Raw has no signature: it is whatever no other driver recognises, named .img or .raw. */
export const rawDriver: FormatDriver = {
  name: 'raw',
  extensions: ['img', 'raw'],
  probe: () => true,
  open: (path, opts) => RawImage.open(path, opts.writable),
  async create(path, opts) {
    const f = await HostFile.create(path);
    await f.truncate(opts.size);
    await f.close();
  },
  // No check: raw has no metadata to be inconsistent (qemu-img check says so, exit 63).
};
