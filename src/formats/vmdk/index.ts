import { VdiskError } from '../../io/errors';
import type { FormatDriver } from '../types';

// Placeholder until the VMDK driver lands: recognises the format, opens nothing.
export const vmdkDriver: FormatDriver = {
  name: 'vmdk',
  extensions: ['vmdk'],
  probe: (head) => {
    if (head.length >= 4) {
      const magic = head.toString('latin1', 0, 4);
      if (magic === 'KDMV' || magic === 'COWD') return true;
    }
    return /^\s*#\s*Disk DescriptorFile/i.test(head.toString('latin1', 0, Math.min(head.length, 1024)));
  },
  open: async (path) => {
    throw VdiskError.unsupported(`vmdk driver not built yet (${path})`);
  },
};
