/** The VHDX driver's entry points, loaded by index.ts when a VHDX image is first used. */
export { checkVhdx } from './check';
export { createVhdx } from './create';
export { VhdxImage } from './vhdx-image';
