/**
 * The contract between the image layer and the format drivers. It lives here, below
 * src/image, because drivers implement it and layers only import downward; src/image
 * re-exports it as the public API.
 */
import type { IoCounters } from '../io/counters';

/** What a guest range is backed by, as `map()` reports it (qemu-img map's vocabulary). */
export type ExtentKind = 'data' | 'zero' | 'unallocated' | 'backing';

export interface Extent {
  offset: number; // guest offset, bytes
  length: number; // bytes
  kind: ExtentKind;
  /** For 'data': where the bytes live in the host file, when they live there uncompressed. */
  hostOffset?: number;
  hostFile?: string;
  compressed?: boolean;
}

export interface Image {
  readonly format: string; // 'qcow2' | 'vmdk' | 'raw'
  readonly path: string;
  readonly virtualSize: number; // bytes
  readonly readOnly: boolean;
  /** Fills `into` completely; ranges past virtualSize are refused (EINVAL). */
  read(offset: number, into: Buffer): Promise<void>;
  /**
   * Optional fast path: the same read done synchronously when it needs no waiting (mapping
   * cached, host reads small or all in the page cache); false when it cannot, having changed
   * nothing but perhaps part of `into`, which read() then fills again. A FUSE read
   * answered this way takes no promise turns (src/merge/request-merger.ts readSync).
   */
  readSync?(offset: number, into: Buffer): boolean;
  /** `data` is owned by the driver once called (the caller does not reuse it). */
  write(offset: number, data: Buffer | Buffer[]): Promise<void>;
  /**
   * Optional fast path: the same write done synchronously when it needs no waiting (small, the
   * mapping cached, clusters written in place or allocated without I/O but the data write);
   * false when it cannot, having done nothing.
   * Unlike write(), `data` stays the caller's: it is used only during the call. A FUSE write
   * answered this way takes no promise turns and no copy (src/merge/request-merger.ts writeSync).
   */
  writeSync?(offset: number, data: Buffer): boolean;
  /** Zero clusters/grains where the format can; otherwise writes zeros. */
  writeZeroes(offset: number, length: number): Promise<void>;
  /**
   * Gives the space of a range back (fstrim, fallocate punch-hole); the range reads as zeros
   * afterwards. Whole clusters/grains are released where the format can, partial ones zeroed.
   */
  discard(offset: number, length: number): Promise<void>;
  /** Every acknowledged write durable: metadata in order, then host datasync. */
  flush(): Promise<void>;
  /** flush + mark clean + close host files (and backing images). Idempotent. */
  close(): Promise<void>;
  map(offset: number, length: number): Promise<Extent[]>;
  /** The image this one reads unallocated ranges from (qcow2 backing file, VMDK parent), if any. */
  backingImage?(): Image | undefined;
  /** Grows the virtual disk (truncate of the raw view). Shrinking throws EINVAL. */
  resize?(newSize: number): Promise<void>;
  /** The host files of this image itself, not of its backing chain (for st_blocks, info). */
  hostFiles(): string[];
  /** Counters for stats: io counters per host file, plus driver-specific ones (cache hits ...). */
  stats(): ImageStats;
  /** `vdiskfs info` fields, qemu-img info's names where both report the same thing. */
  info(): Promise<ImageInfo>;
}

export interface ImageStats {
  io: Record<string, IoCounters>;
  driver: Record<string, number>;
}

export interface ImageInfo {
  filename: string;
  format: string;
  'virtual-size': number;
  'actual-size'?: number;
  'cluster-size'?: number;
  'backing-filename'?: string;
  'full-backing-filename'?: string;
  'backing-filename-format'?: string;
  'dirty-flag'?: boolean;
  snapshots?: SnapshotInfo[];
  'format-specific'?: { type: string; data: Record<string, unknown> };
  'backing-image'?: ImageInfo;
  [k: string]: unknown;
}

export interface SnapshotInfo {
  id: string;
  name: string;
  'vm-state-size': number;
  'date-sec': number;
  'date-nsec': number;
  'vm-clock-sec': number;
  'vm-clock-nsec': number;
  icount?: number;
}

/**
 * Per-driver knobs, one typed object that every layer passes through without looking inside;
 * each driver reads only its own part (and backing images get the same object).
 */
export interface DriverTuning {
  qcow2?: {
    /** Metadata cache bytes (L2 tables + refcount blocks); the driver's default when undefined. */
    cacheSize?: number;
  };
  vmdk?: {
    /** Grain-table cache bytes per sparse extent. */
    tableCacheBytes?: number;
    /** Allocate grain by grain, each table entry written through (QEMU's way), for measuring the seed. */
    noMultiAlloc?: boolean;
  };
}

export interface OpenOptions {
  /** Open for writing. A driver may still open read-only (corrupt bit, RDONLY extent): it then sets readOnly=true and logs why. */
  writable: boolean;
  /**
   * Opens a backing file / VMDK parent through the registry (any format, probed by content;
   * `format` from the image's header wins when given). The path comes from `reach()`.
   * Backing images open read-only.
   */
  openBacking: (path: string, format?: string) => Promise<Image>;
  /**
   * Every file name an image carries (backing file, data file, extent, parent) goes through
   * here before it is opened: the confinement rule (src/image/confine.ts) gives the real path of
   * a regular file inside the folders this image may reach, or throws one line naming the
   * image, the field and the name.
   */
  reach: (name: string, field: string) => Promise<string>;
  /**
   * Whether a folder lies inside what this image may reach, before it is listed (a VDI looks
   * for its parent by UUID among the files beside it). Absent: only the image's own folder.
   */
  mayList?: (dir: string) => boolean;
  /** Per-driver knobs (cache sizes, the VMDK allocation mode), passed down untouched. */
  tuning?: DriverTuning;
  /** qcow2: open this internal snapshot read-only instead of the active layer. */
  snapshot?: string;
  /** Logs one line (warnings such as "opened read-only because ..."). */
  warn: (message: string) => void;
  /**
   * Long work (a check, a refcount rebuild at open) says how far it got, 0..1, now and then:
   * a command's status line, or the mount's log. Absent: nobody asks.
   */
  progress?: (fraction: number, detail?: string) => void;
}

export interface CreateOptions {
  size: number;
  /** qemu-img -o options, already split: cluster_size, compat, subformat ... (strings as given). */
  options: Record<string, string>;
  backingFile?: string;
  backingFormat?: string;
  /** Opens an image (for reading a backing file's size / CID). */
  openBacking: (path: string, format?: string) => Promise<Image>;
  /** The confinement rule for names the new image carries (see OpenOptions.reach). */
  reach: (name: string, field: string) => Promise<string>;
  /** Preallocation of a big image says how far it got, 0..1 (see OpenOptions.progress). */
  progress?: (fraction: number) => void;
}

export interface CheckResult {
  /** The check itself could not finish a part (qemu-img's check-errors, exit 1); not the image's fault. */
  errors: number;
  leaks: number;
  corruptions: number;
  messages: string[];
  repaired?: number;
  /** Of `repaired`: how many were leaks and how many corruptions (qemu-img's leaks-fixed / corruptions-fixed). */
  leaksFixed?: number;
  corruptionsFixed?: number;
  /** qemu-img check's allocation line and image end offset, where the format counts them (qcow2). */
  stats?: CheckStats;
}

export interface CheckStats {
  totalClusters: number; // guest clusters of the virtual disk
  allocatedClusters: number; // active layer: normal, preallocated-zero and compressed clusters
  fragmentedClusters: number;
  compressedClusters: number;
  imageEndOffset: number; // end of the last host cluster in use (stored or referenced)
}

/** One format: how to recognise it, open it, create it. The registry in src/image lists them. */
export interface FormatDriver {
  readonly name: string;
  /** Extensions that may carry this format (without dot). */
  readonly extensions: readonly string[];
  /** True when the first bytes of a file (at least 4 KiB, fewer if the file is shorter) are this format. */
  probe(head: Buffer, path: string): boolean;
  open(path: string, opts: OpenOptions): Promise<Image>;
  create?(path: string, opts: CreateOptions): Promise<void>;
  /** Consistency check like qemu-img check; `repair` fixes leaks/refcounts where the format can. */
  check?(path: string, opts: OpenOptions & { repair: boolean }): Promise<CheckResult>;
  /**
   * What a listing needs to know of an image file beyond opening it, read in one go (a folder
   * may hold thousands): files it owns, its internal snapshots, the parent it names.
   */
  describe?(path: string, head: Buffer): Promise<FileDescription>;
}

export interface FileDescription {
  /** Host files that belong to the image and must not be listed on their own (extents, data files). */
  auxiliaryFiles?: string[];
  /** Internal snapshot names (qcow2), shown as read-only `<name>@<snap>.raw` views. */
  snapshots?: string[];
  /** The backing/parent file the image names, resolved to an absolute path, if any. */
  backingFile?: string;
}
