/**
 * The one module of foreign calls: the libc syscalls Node lacks, through koffi (ffi.ts is the only
 * file in vdiskfs that imports koffi). Every wrapper is synchronous unless its name says Async;
 * a failure throws SyscallError. Callers import from here, never from the files inside.
 */
export { SyscallError } from './ffi';
export * from './files';
export * from './poll';
export * from './sockets';
export * from './uring';
export * from './process';
