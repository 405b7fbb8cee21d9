/**
 * Node ids of the kernel protocol for a path-based core. LOOKUP hands the kernel a node id and
 * counts it; FORGET/BATCH_FORGET take lookups back; a node whose count reaches 0 is dropped (the
 * root, id 1, never is). Ids are never reused, so the generation number can stay 0. A path whose
 * identity changes gets a new id (remember()).
 * Inode numbers are stable per path for the whole session (readdir and stat agree).
 */
export const ROOT_ID = 1;

interface Node {
  path: string;
  lookups: number;
  /** What the path showed when the node was made (see remember()). */
  identity: string;
}

export class NodeTable {
  private readonly byId = new Map<number, Node>([[ROOT_ID, { path: '/', lookups: 1, identity: '' }]]);
  private readonly byPath = new Map<string, number>([['/', ROOT_ID]]);
  private readonly inos = new Map<string, number>([['/', ROOT_ID]]);
  private nextId = ROOT_ID + 1;
  private nextIno = ROOT_ID + 1;

  /** The path of a node the kernel knows, or undefined for a forgotten (stale) one. */
  pathOf(id: number): string | undefined {
    return this.byId.get(id)?.path;
  }

  /** The path of `name` inside node `parent`. */
  childPath(parent: string, name: string): string {
    return parent === '/' ? `/${name}` : `${parent}/${name}`;
  }

  /**
   * A successful LOOKUP: the node id for `path`, with one more lookup counted. When the path now
   * shows something else (`identity` changed: a partition moved or was resized, an image file
   * was replaced), it gets a new node id, so the kernel makes a new inode instead of keeping the
   * old one's size — with the writeback cache the kernel trusts its own size over ours.
   */
  remember(path: string, identity = ''): number {
    let id = this.byPath.get(path);
    if (id !== undefined && this.byId.get(id)!.identity !== identity) id = undefined;
    if (id === undefined) {
      id = this.nextId++;
      this.byPath.set(path, id);
      this.byId.set(id, { path, lookups: 0, identity });
    }
    this.byId.get(id)!.lookups++;
    return id;
  }

  /** FORGET: the kernel dropped `n` lookups of node `id`. */
  forget(id: number, n: number): void {
    if (id === ROOT_ID) return;
    const node = this.byId.get(id);
    if (!node) return;
    node.lookups -= n;
    if (node.lookups <= 0) {
      this.byId.delete(id);
      // The path may already belong to a newer node (its identity changed): leave that one.
      if (this.byPath.get(node.path) === id) this.byPath.delete(node.path);
    }
  }

  /** Inode number shown for a path (stat's st_ino and readdir's d_ino). */
  inoOf(path: string): number {
    let ino = this.inos.get(path);
    if (ino === undefined) {
      ino = this.nextIno++;
      this.inos.set(path, ino);
    }
    return ino;
  }

  /** Nodes the kernel still holds (root included). */
  get size(): number {
    return this.byId.size;
  }
}
