import type { FormatDriver } from '../types';
import { looksLikeDescriptor } from './descriptor';
import { extentPaths, parentPath, readLayout } from './layout';
import { VmdkImage } from './vmdk-image';
import { createVmdk } from './create';
import { checkVmdk } from './check';

export { VmdkImage };

/** VMDK: a KDMV sparse extent with an embedded descriptor, or a text descriptor naming extents. */
export const vmdkDriver: FormatDriver = {
  name: 'vmdk',
  extensions: ['vmdk'],
  probe: (head) => {
    if (head.length >= 4) {
      const magic = head.toString('latin1', 0, 4);
      if (magic === 'KDMV' || magic === 'COWD') return true;
    }
    return looksLikeDescriptor(head.toString('latin1', 0, Math.min(head.length, 1024)));
  },
  open: (path, opts) => VmdkImage.open(path, opts),
  create: createVmdk,
  check: checkVmdk,
  async auxiliaryFiles(path) {
    return extentPaths(path, await readLayout(path)).filter((p) => p !== path);
  },
  async backingFileOf(path) {
    return parentPath(path, await readLayout(path));
  },
};
