/** What the io layer did to one host file; the drivers' metadata cost is measured with it. */
export interface IoCounters {
  reads: number;
  writes: number;
  bytesRead: number;
  bytesWritten: number;
  flushes: number;
}

export function newCounters(): IoCounters {
  return { reads: 0, writes: 0, bytesRead: 0, bytesWritten: 0, flushes: 0 };
}

/**
 * What a host I/O is for, in the driver's words: tests check write order by these (data before
 * the L2 entry that points to it, refcount blocks before the L2 tables ...), so they are a closed
 * set rather than free strings.
 */
export type IoTag =
  | 'data' // guest data
  | 'header' // image header (qcow2, VMDK sparse/COWD/SE-sparse)
  | 'l1' // qcow2 L1 table
  | 'l2' // qcow2 L2 tables
  | 'reftable' // qcow2 refcount table
  | 'refblock' // qcow2 refcount blocks
  | 'snapshot' // qcow2 snapshot table and its extensions
  | 'gd' // VMDK grain directory
  | 'gt' // VMDK grain tables
  | 'descriptor' // VMDK text descriptor
  | 'bat' // VHD/VHDX block allocation table, VDI block map
  | 'bitmap' // VHD/VHDX sector bitmaps
  | 'footer' // VHD footer (and its copy at offset 0)
  | 'log' // VHDX metadata log (entries, and their replay)
  | 'metadata' // VHDX region table and metadata region
  | 'check' // reads of `check`
  | 'probe' // format probing
  | 'discard' // space given back (punch)
  | 'flush'; // the host barrier (fdatasync) of a flush

/**
 * One host I/O event, handed to an observer when one is installed (tests record the order of
 * writes and flushes with it; `tag` is the driver's word for what the write is, e.g. 'l2').
 */
export interface IoEvent {
  /** writeback: the host was asked to start writing the range to its disk (src/io/write-behind.ts). */
  kind: 'read' | 'write' | 'flush' | 'truncate' | 'punch' | 'writeback';
  path: string;
  offset: number;
  length: number;
  tag?: IoTag;
}

export type IoObserver = (e: IoEvent) => void;
