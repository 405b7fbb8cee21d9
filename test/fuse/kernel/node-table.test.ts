import { expect, it } from 'vitest';
import { NodeTable, ROOT_ID } from '../../../src/fuse/kernel/node-table';

it('node ids: counted by LOOKUP, dropped when FORGET takes every lookup back, never reused; root stays', () => {
  const t = new NodeTable();
  expect(t.pathOf(ROOT_ID)).toBe('/');
  const a = t.remember('/a.raw');
  expect(t.remember('/a.raw')).toBe(a);
  expect(t.pathOf(a)).toBe('/a.raw');
  t.forget(a, 1);
  expect(t.pathOf(a)).toBe('/a.raw');
  t.forget(a, 1);
  expect(t.pathOf(a)).toBeUndefined();
  const again = t.remember('/a.raw');
  expect(again).not.toBe(a);
  t.forget(ROOT_ID, 100);
  expect(t.pathOf(ROOT_ID)).toBe('/');
  expect(t.childPath('/', 'x')).toBe('/x');
  expect(t.childPath('/d', 'x')).toBe('/d/x');
  // Inode numbers stay per path across forget, so stat and readdir agree.
  expect(t.inoOf('/a.raw')).toBe(t.inoOf('/a.raw'));
  expect(t.inoOf('/')).toBe(ROOT_ID);
});

it('a path that shows something else (identity changed) gets a new node id; the old one lives until forgotten', () => {
  const t = new NodeTable();
  const old = t.remember('/d.qcow2.p1.raw', 'p1048576+16777216');
  expect(t.remember('/d.qcow2.p1.raw', 'p1048576+16777216')).toBe(old);
  const moved = t.remember('/d.qcow2.p1.raw', 'p1048576+133169152');
  expect(moved).not.toBe(old);
  expect(t.pathOf(old)).toBe('/d.qcow2.p1.raw');
  t.forget(old, 2);
  expect(t.pathOf(old)).toBeUndefined();
  // Forgetting the old node leaves the path with the new one.
  expect(t.remember('/d.qcow2.p1.raw', 'p1048576+133169152')).toBe(moved);
});
