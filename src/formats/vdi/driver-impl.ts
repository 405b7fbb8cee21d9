/** The VDI driver's entry points, loaded by index.ts when a VDI image is first used. */
export { checkVdi } from './check';
export { createVdi } from './create';
export { openVdi } from './vdi-image';
