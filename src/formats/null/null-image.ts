import type { Extent, Image, ImageInfo, ImageStats } from '../types';

/**
 * A driver that does nothing: reads zeros, discards writes. Mounted with the hidden
 * `--null-driver` flag it measures the ceiling of the FUSE stack (benchmarks only).
 */
export class NullImage implements Image {
  readonly format = 'null';
  readonly readOnly = false;

  constructor(
    readonly path: string,
    readonly virtualSize: number,
  ) {}

  async read(_offset: number, into: Buffer): Promise<void> {
    into.fill(0);
  }
  readSync(_offset: number, into: Buffer): boolean {
    into.fill(0);
    return true;
  }
  async write(): Promise<void> {}
  writeSync(): boolean {
    return true;
  }
  async writeZeroes(): Promise<void> {}
  async discard(): Promise<void> {}
  async flush(): Promise<void> {}
  async close(): Promise<void> {}
  async map(offset: number, length: number): Promise<Extent[]> {
    return [{ offset, length, kind: 'zero' }];
  }
  hostFiles(): string[] {
    return [];
  }
  stats(): ImageStats {
    return { io: {}, driver: {} };
  }
  async info(): Promise<ImageInfo> {
    return { filename: this.path, format: 'null', 'virtual-size': this.virtualSize };
  }
}
