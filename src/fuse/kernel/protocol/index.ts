/**
 * The FUSE kernel protocol (include/uapi/linux/fuse.h): one small codec per message family.
 * The transport imports each family's file, not this index: a CommonJS `export *` is a getter on
 * every access, which the request loop would pay per field (see src/io/syscalls/index.ts).
 */
export * from './opcodes';
export * from './flags';
export * from './u64';
export * from './header';
export * from './init';
export * from './negotiate';
export * from './attr';
export * from './open';
export * from './rw';
export * from './readdir';
export * from './setattr';
export * from './statfs';
export * from './fallocate';
export * from './lseek';
export * from './forget';
