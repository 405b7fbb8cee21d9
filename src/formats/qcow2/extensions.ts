/**
 * Header extensions (qcow2.txt "Header extensions"): after the fixed header, in cluster 0,
 * entries of {type u32, length u32, data padded to 8 bytes}, ended by type 0. We parse the ones
 * we use and never rewrite the area, so unknown extensions and the bitmap directory stay intact.
 */
import { VdiskError } from '../../io/errors';

export const EXT_END = 0x00000000;
export const EXT_BACKING_FORMAT = 0xe2792aca;
export const EXT_FEATURE_TABLE = 0x6803f857;
export const EXT_BITMAPS = 0x23852875;
export const EXT_CRYPTO = 0x0537be77;
export const EXT_DATA_FILE = 0x44415441;

export interface FeatureName {
  type: 'incompatible' | 'compatible' | 'autoclear';
  bit: number;
  name: string;
}

export interface Extensions {
  backingFormat?: string;
  dataFile?: string;
  features: FeatureName[];
  hasBitmaps: boolean;
  /** Byte offset just past the end marker (where a backing file name may start). */
  end: number;
}

const FEATURE_TYPES = ['incompatible', 'compatible', 'autoclear'] as const;

/** The feature name table: 48-byte entries of type u8, bit u8, name (46 bytes, NUL padded). */
function decodeFeatureTable(data: Buffer): FeatureName[] {
  const out: FeatureName[] = [];
  for (let i = 0; i + 48 <= data.length; i += 48) {
    const type = FEATURE_TYPES[data.readUInt8(i)];
    if (type)
      out.push({
        type,
        bit: data.readUInt8(i + 1),
        name: data
          .subarray(i + 2, i + 48)
          .toString('utf8')
          .replace(/\0.*$/s, ''),
      });
  }
  return out;
}

/**
 * Extensions end at the end marker, at the backing file name (older images put the name right
 * after the header, with no extension area: `limit` = backing_file_offset) or at the cluster end.
 */
export function parseExtensions(cluster0: Buffer, start: number, limit = cluster0.length): Extensions {
  // The feature names only ever name a bit in an error message: decoded when first asked for,
  // not at every open (a listing opens each of thousands of images).
  let featureTable: Buffer | undefined;
  let features: FeatureName[] | undefined;
  const ext: Extensions = {
    get features() {
      return (features ??= featureTable ? decodeFeatureTable(featureTable) : []);
    },
    hasBitmaps: false,
    end: start,
  };
  const end = Math.min(limit, cluster0.length);
  let off = start;
  for (;;) {
    if (off + 8 > end) break; // no room for another extension: ended (QEMU does the same)
    const type = cluster0.readUInt32BE(off);
    const len = cluster0.readUInt32BE(off + 4);
    off += 8;
    if (type === EXT_END) break;
    if (off + len > end) throw VdiskError.corrupt(`qcow2 header extension 0x${type.toString(16)} runs past the extension area`);
    const data = cluster0.subarray(off, off + len);
    switch (type) {
      case EXT_BACKING_FORMAT:
        ext.backingFormat = data.toString('utf8').replace(/\0+$/, '');
        break;
      case EXT_DATA_FILE:
        ext.dataFile = data.toString('utf8').replace(/\0+$/, '');
        break;
      case EXT_FEATURE_TABLE:
        featureTable = data;
        break;
      case EXT_BITMAPS:
        ext.hasBitmaps = true;
        break;
      case EXT_CRYPTO:
        throw VdiskError.unsupported('qcow2 encryption header present: encrypted images are not supported');
      default:
        break; // unknown: ignored, kept intact on disk
    }
    off += Math.ceil(len / 8) * 8;
  }
  ext.end = off;
  return ext;
}

function entry(type: number, data: Buffer): Buffer {
  const padded = Buffer.alloc(8 + Math.ceil(data.length / 8) * 8);
  padded.writeUInt32BE(type, 0);
  padded.writeUInt32BE(data.length, 4);
  data.copy(padded, 8);
  return padded;
}

/** The extension area we write when creating an image. */
export function serializeExtensions(opts: { backingFormat?: string; features: FeatureName[] }): Buffer {
  const parts: Buffer[] = [];
  if (opts.backingFormat) parts.push(entry(EXT_BACKING_FORMAT, Buffer.from(opts.backingFormat)));
  if (opts.features.length) {
    const t = Buffer.alloc(48 * opts.features.length);
    opts.features.forEach((f, i) => {
      t.writeUInt8(FEATURE_TYPES.indexOf(f.type), i * 48);
      t.writeUInt8(f.bit, i * 48 + 1);
      t.write(f.name, i * 48 + 2, 46, 'utf8');
    });
    parts.push(entry(EXT_FEATURE_TABLE, t));
  }
  parts.push(Buffer.alloc(8)); // end marker
  return Buffer.concat(parts);
}

export const STANDARD_FEATURES: FeatureName[] = [
  { type: 'incompatible', bit: 0, name: 'dirty bit' },
  { type: 'incompatible', bit: 1, name: 'corrupt bit' },
  { type: 'incompatible', bit: 2, name: 'external data file' },
  { type: 'incompatible', bit: 3, name: 'compression type' },
  { type: 'incompatible', bit: 4, name: 'extended L2 entries' },
  { type: 'compatible', bit: 0, name: 'lazy refcounts' },
  { type: 'autoclear', bit: 0, name: 'bitmaps' },
  { type: 'autoclear', bit: 1, name: 'raw external data' },
];
