import fs from 'node:fs';
import { VdiskError } from '../io/errors';

/** The `-o` options a mount accepts, checked before anything is mounted. */
export interface FuseMountOptions {
  allowOther: boolean;
  /** Mount over a folder that is not empty. */
  nonempty: boolean;
  readOnly: boolean;
  /** nosuid, nodev, noexec, noatime...: passed to mount(2) / fusermount3 / libfuse as given. */
  generic: string[];
}

const GENERIC = new Set(['nosuid', 'nodev', 'noexec', 'suid', 'dev', 'exec', 'noatime', 'atime', 'relatime', 'nodiratime', 'async', 'rw']);
const KNOWN = ['allow_other', 'nonempty', 'ro', 'default_permissions', ...GENERIC];

/** Parses `-o a,b` values; an unknown option is one clear line, never passed on to fail later. */
export function parseFuseOptions(options: string[]): FuseMountOptions {
  const o: FuseMountOptions = { allowOther: false, nonempty: false, readOnly: false, generic: [] };
  for (const opt of options.flatMap((x) => x.split(',')).filter(Boolean)) {
    if (opt === 'allow_other') o.allowOther = true;
    else if (opt === 'nonempty') o.nonempty = true;
    else if (opt === 'ro') o.readOnly = true;
    else if (opt === 'default_permissions')
      continue; // always on: the kernel checks permissions
    else if (GENERIC.has(opt)) o.generic.push(opt);
    else throw VdiskError.invalid(`unknown mount option -o ${opt} (known: ${KNOWN.join(', ')})`);
  }
  return o;
}

/** allow_other for a user who is not root needs user_allow_other in /etc/fuse.conf (fusermount3 refuses otherwise). */
export function userMayAllowOther(): boolean {
  try {
    return /^\s*user_allow_other\s*$/m.test(fs.readFileSync('/etc/fuse.conf', 'utf8'));
  } catch {
    return false;
  }
}
