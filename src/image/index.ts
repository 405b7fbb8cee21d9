// The public face of the image layer: the contract drivers implement, and how to open them.
export type {
  DriverTuning,
  Image,
  Extent,
  ExtentKind,
  ImageInfo,
  ImageStats,
  OpenOptions,
  CreateOptions,
  CheckResult,
  FormatDriver,
  SnapshotInfo,
} from '../formats/types';
export { openImage, driverOptions, MAX_CHAIN_DEPTH } from './open';
export type { OpenImageOptions } from './open';
export { Confinement } from './confine';
export { probeImage, detectFormat, readHead, extensionOf } from './probe';
export { drivers, driverByName } from './registry';
export { ImageLock, lockImage, writerElsewhere, LOCK_MODES } from './locks';
export type { LockMode, LockPerms } from './locks';
