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
 * One host I/O event, handed to an observer when one is installed (tests record the order of
 * writes and flushes with it; `tag` is the driver's word for what the write is, e.g. 'l2').
 */
export interface IoEvent {
  kind: 'read' | 'write' | 'flush' | 'truncate' | 'punch';
  path: string;
  offset: number;
  length: number;
  tag?: string;
}

export type IoObserver = (e: IoEvent) => void;
