/**
 * The one module of foreign calls: the libc syscalls Node lacks, through koffi (ffi.ts is the only
 * file in vdiskfs that imports koffi). Every wrapper is synchronous unless its name says Async;
 * a failure throws SyscallError.
 *
 * This index is the module's table of contents, for code off the request path. Code a request
 * runs through (the session loop, the io_uring ring, HostFile, write-behind) imports the file
 * inside instead: TypeScript compiles `export *` to CommonJS getters, one shared closure whose
 * keyed load V8 leaves megamorphic, so every `syscalls_1.readOrErrno` through this index costs a
 * getter call; `perf` found them among the transport's top user-space costs.
 */
export { SyscallError } from './ffi';
export * from './files';
export * from './poll';
export * from './sockets';
export * from './uring';
export * from './process';
