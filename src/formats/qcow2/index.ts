import { VdiskError } from '../../io/errors';
import type { FormatDriver } from '../types';

// Placeholder until the qcow2 driver lands: recognises the format, opens nothing.
export const qcow2Driver: FormatDriver = {
  name: 'qcow2',
  extensions: ['qcow2', 'qcow'],
  probe: (head) => head.length >= 4 && head.readUInt32BE(0) === 0x514649fb, // "QFI\xfb"
  open: async (path) => {
    throw VdiskError.unsupported(`qcow2 driver not built yet (${path})`);
  },
};
