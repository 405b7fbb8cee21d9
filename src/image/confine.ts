/**
 * The confinement rule: an image may only reach regular files inside the folder it is served
 * from (backing files, qcow2 data files, VMDK extents and parents), after resolving symlinks.
 * The user may open a door for another folder (`--allow-outside DIR`); only through such a door
 * may an image name a block device (raw device mappings are a real VMDK use).
 *
 * Everything an image names is untrusted. The walk below resolves symlinks one component at a
 * time and never touches a path that is not already inside an allowed folder, so a hostile name
 * cannot make us stat `/proc/...`, a FIFO or a hung FUSE mount elsewhere, let alone open it.
 * Opening itself (src/io/host-file.ts) adds O_NOFOLLOW | O_NONBLOCK and re-checks the file type
 * on the open descriptor, so a file swapped in after this check can neither block nor be a device.
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { VdiskError } from '../io/errors';

/** Linux gives up after 40 symlinks in one lookup (ELOOP); so do we. */
const MAX_SYMLINKS = 40;

interface Folder {
  /** Real path (no symlinks), no trailing separator except for '/'. */
  dir: string;
  /** A door the user opened: block devices are allowed there. */
  door: boolean;
  /** The folder as the user named it, when that goes through a symlink (absolute names may use it). */
  alias?: string;
}

export class Confinement {
  private constructor(private readonly folders: readonly Folder[]) {}

  /**
   * `root`: the folder served (or, for one image, the image's own folder); `doors`: folders the
   * user allowed with --allow-outside. Both are taken as the user gave them (symlinks resolved).
   */
  static async create(root: string, doors: readonly string[] = []): Promise<Confinement> {
    const folder = async (dir: string, door: boolean, what: string): Promise<Folder> => {
      const real = await realFolder(dir, what);
      const given = path.resolve(dir);
      return given === real ? { dir: real, door } : { dir: real, door, alias: given };
    };
    const folders = [await folder(root, false, 'images folder')];
    for (const d of doors) folders.push(await folder(d, true, '--allow-outside folder'));
    return new Confinement(folders);
  }

  /** The same rule for one image file given on the command line: its own (real) folder is the root. */
  static async forFile(file: string, doors: readonly string[] = []): Promise<{ confinement: Confinement; file: string }> {
    const real = await fs.realpath(file).catch((e: NodeJS.ErrnoException) => {
      throw new VdiskError('ENOENT', e.code === 'ENOENT' ? `${file} does not exist` : `${file}: ${e.message}`);
    });
    return { confinement: await Confinement.create(path.dirname(real), doors), file: real };
  }

  /** The folders an image may reach, for messages and tests. */
  get roots(): string[] {
    return this.folders.map((f) => f.dir);
  }

  /**
   * Resolves a file name that `image` carries in `field` ("backing file", "data file", "extent",
   * "parent") to the real path of a regular file inside an allowed folder, or throws one line
   * naming the image, the field and the name.
   */
  async reach(image: string, name: string, field: string): Promise<string> {
    const refuse = (why: string, code: 'EACCES' | 'ENOENT' | 'EINVAL' = 'EACCES') =>
      new VdiskError(code, `${image}: ${field} '${printable(name)}' ${why}`, { image, field, name });
    if (name.includes('\0')) throw refuse('has a NUL byte in its name', 'EINVAL');
    if (name.length === 0) throw refuse('is empty', 'EINVAL');
    if (name.length > 4096) throw refuse('is longer than a path can be', 'EINVAL');
    // qcow2 allows a "file:" protocol prefix; any other protocol (json:, nbd:, http:) is not a file.
    let n = name;
    if (n.startsWith('file:')) n = n.slice(5);
    else if (/^[a-z][a-z0-9+.-]*:/i.test(n) && !n.includes('/')) throw refuse('is not a file name (protocols are not supported)', 'EINVAL');

    let pending = this.unalias(path.resolve(path.dirname(image), n));
    let links = 0;
    for (;;) {
      const folder = this.folderOf(pending);
      if (!folder) throw refuse(`is outside ${this.describeFolders()}${this.hint()}`);
      const rest = path
        .relative(folder.dir, pending)
        .split(path.sep)
        .filter((c) => c !== '' && c !== '.');
      let cur = folder.dir;
      let redirected: string | undefined;
      for (let i = 0; i < rest.length; i++) {
        const comp = rest[i]!;
        const next = path.join(cur, comp);
        const st = await fs.lstat(next).catch((e: NodeJS.ErrnoException) => e);
        if (st instanceof Error) {
          if (st.code === 'ENOENT') throw refuse(`does not exist (looked for ${next})`, 'ENOENT');
          if (st.code === 'ENOTDIR') throw refuse(`is not a file (${cur} is not a folder)`, 'EINVAL');
          throw refuse(`cannot be looked up: ${st.message}`);
        }
        if (st.isSymbolicLink()) {
          if (++links > MAX_SYMLINKS) throw refuse('goes through too many symlinks', 'EINVAL');
          const target = await fs.readlink(next);
          // The rest of the name continues from where the link points.
          redirected = path.resolve(cur, target, ...rest.slice(i + 1));
          break;
        }
        const last = i === rest.length - 1;
        if (!last) {
          if (!st.isDirectory()) throw refuse(`is not a file (${next} is not a folder)`, 'EINVAL');
          cur = next;
          continue;
        }
        if (st.isFile()) return next;
        if (st.isBlockDevice() && folder.door) return next;
        throw refuse(
          `is ${kindOf(st)}, not a regular file${st.isBlockDevice() ? ' (block devices only through --allow-outside)' : ''}`,
          'EINVAL',
        );
      }
      if (redirected === undefined) throw refuse('is a folder, not a file', 'EINVAL');
      pending = redirected;
    }
  }

  /** An absolute name written with the folder's symlinked name (libvirt does) means the real folder. */
  private unalias(p: string): string {
    for (const f of this.folders) {
      if (f.alias && (p === f.alias || p.startsWith(f.alias + path.sep))) return f.dir + p.slice(f.alias.length);
    }
    return p;
  }

  /** Is this real path inside one of the allowed folders? */
  contains(realPath: string): boolean {
    return this.folderOf(realPath) !== undefined;
  }

  /** The allowed folder a (lexically resolved) path lies in; doors are checked first. */
  private folderOf(p: string): Folder | undefined {
    const inside = (f: Folder) => f.dir === '/' || p === f.dir || p.startsWith(f.dir + path.sep);
    return this.folders.find((f) => f.door && inside(f)) ?? this.folders.find(inside);
  }

  private describeFolders(): string {
    const [root, ...doors] = this.folders.map((f) => f.dir);
    return doors.length ? `${root} and the allowed folders (${doors.join(', ')})` : `${root}`;
  }

  private hint(): string {
    return ' (to allow it: --allow-outside DIR)';
  }
}

async function realFolder(dir: string, what: string): Promise<string> {
  const real = await fs.realpath(dir).catch(() => undefined);
  if (!real) throw new VdiskError('ENOENT', `${what} ${dir} does not exist`);
  const st = await fs.stat(real);
  if (!st.isDirectory()) throw new VdiskError('EINVAL', `${what} ${dir} is not a folder`);
  return real;
}

function kindOf(st: import('node:fs').Stats): string {
  if (st.isDirectory()) return 'a folder';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isSocket()) return 'a socket';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  return 'not a regular file';
}

/** Names from images may hold control characters: never let them break a log line. */
function printable(name: string): string {
  // eslint-disable-next-line no-control-regex -- control characters are what it looks for
  const s = name.replace(/[\x00-\x1f\x7f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
  return s.length > 200 ? s.slice(0, 200) + '…' : s;
}
