import { VdiskError } from '../../io/errors';

/**
 * The VMDK text descriptor: `key=value` header lines, extent lines, `ddb.key = "value"`.
 * Kept as its original lines (and line ends) so that rewriting it changes only what must
 * change (the CID on the first write), as VMware and QEMU expect.
 */

/** A descriptor longer than this is hostile; real ones are well under 4 KiB. */
export const MAX_DESCRIPTOR_BYTES = 1 << 20;

export type Access = 'RW' | 'RDONLY' | 'NOACCESS';

export interface ExtentLine {
  access: Access;
  sectors: number; // guest size of the extent, 512-byte sectors
  type: string; // SPARSE, FLAT, ZERO, VMFS, VMFSSPARSE, SESPARSE ...
  fileName?: string; // as written (relative to the descriptor's folder)
  offsetSectors: number; // FLAT: where the guest data starts in the file
}

const EXTENT_RE = /^\s*(RW|RDONLY|NOACCESS)\s+(\d+)\s+([A-Za-z]+)(?:\s+(?:"([^"]*)"|(\S+))(?:\s+(\d+))?)?\s*$/;
const KV_RE = /^\s*([A-Za-z0-9_.]+)\s*=\s*(.*?)\s*$/;

export class Descriptor {
  readonly extents: ExtentLine[] = [];

  private constructor(
    private readonly lines: string[],
    readonly eol: string,
  ) {
    for (const line of lines) {
      const m = EXTENT_RE.exec(line);
      if (!m) continue;
      const sectors = Number(m[2]);
      if (!Number.isSafeInteger(sectors)) throw VdiskError.corrupt(`extent size out of range: ${line.trim()}`);
      const off = m[6] !== undefined ? Number(m[6]) : 0;
      if (!Number.isSafeInteger(off)) throw VdiskError.corrupt(`extent offset out of range: ${line.trim()}`);
      this.extents.push({ access: m[1] as Access, sectors, type: m[3]!.toUpperCase(), fileName: m[4] ?? m[5], offsetSectors: off });
    }
  }

  static parse(text: string): Descriptor {
    if (text.length > MAX_DESCRIPTOR_BYTES) throw VdiskError.corrupt('descriptor larger than 1 MiB');
    if (text.includes('\0')) text = text.slice(0, text.indexOf('\0'));
    const eol = text.includes('\r\n') ? '\r\n' : '\n';
    const d = new Descriptor(text.split(/\r?\n/), eol);
    if (d.extents.length === 0) throw VdiskError.corrupt('descriptor has no extent lines');
    return d;
  }

  /** Value of a `key=value` line (quotes removed), header and ddb alike. */
  get(key: string): string | undefined {
    const want = key.toLowerCase();
    for (const line of this.lines) {
      const m = KV_RE.exec(line);
      if (m && m[1]!.toLowerCase() === want) return unquote(m[2]!);
    }
    return undefined;
  }

  /** Sets the size (sectors) of extent line `index`, keeping the rest of the line as it is. */
  setExtentSectors(index: number, sectors: number): void {
    let k = -1;
    for (let i = 0; i < this.lines.length; i++) {
      if (!EXTENT_RE.test(this.lines[i]!) || ++k !== index) continue;
      this.lines[i] = this.lines[i]!.replace(/^(\s*\S+\s+)\d+/, `$1${sectors}`);
      this.extents[index]!.sectors = sectors;
      return;
    }
    throw VdiskError.invalid(`descriptor has no extent line ${index}`);
  }

  /** Replaces a header value in place, keeping the line's quoting; adds it after createType if absent. */
  set(key: string, value: string): void {
    const want = key.toLowerCase();
    for (let i = 0; i < this.lines.length; i++) {
      const m = KV_RE.exec(this.lines[i]!);
      if (m && m[1]!.toLowerCase() === want) {
        const quoted = m[2]!.startsWith('"');
        this.lines[i] = this.lines[i]!.replace(/=.*$/, `=${quoted ? `"${value}"` : value}`);
        return;
      }
    }
    const at = this.lines.findIndex((l) => /^\s*createType\s*=/i.test(l));
    this.lines.splice(at < 0 ? 1 : at + 1, 0, `${key}=${value}`);
  }

  get createType(): string {
    return this.get('createType') ?? '';
  }

  /** Content ID; 0xffffffff in parentCID means "no parent". */
  get cid(): number {
    return parseHex32(this.get('CID'));
  }

  get parentCid(): number {
    return parseHex32(this.get('parentCID') ?? 'ffffffff');
  }

  get parentFileNameHint(): string | undefined {
    return this.get('parentFileNameHint');
  }

  toString(): string {
    return this.lines.join(this.eol);
  }
}

function unquote(v: string): string {
  return v.length >= 2 && v.startsWith('"') && v.endsWith('"') ? v.slice(1, -1) : v;
}

function parseHex32(v: string | undefined): number {
  if (v === undefined) return 0xffffffff;
  const n = parseInt(v, 16);
  return Number.isFinite(n) ? n >>> 0 : 0xffffffff;
}

export function formatCid(cid: number): string {
  return (cid >>> 0).toString(16).padStart(8, '0');
}

/** True when `text` looks like a descriptor file (VMware's and QEMU's probe: the signature line or the keys). */
export function looksLikeDescriptor(text: string): boolean {
  return /^\s*#\s*Disk DescriptorFile/i.test(text) || (/^\s*version\s*=/m.test(text) && /createType\s*=/.test(text));
}
