/**
 * Writes tar archives with exact headers, such as no tar program writes from a real tree: a
 * symbolic link or a hard link to anywhere, devices, a setuid file owned by root, names with
 * `..` or a leading `/`. Python's tarfile writes what it is given; the tests need python3.
 */
import { execFileSync } from 'node:child_process';

export interface Member {
  name: string;
  type?: 'file' | 'dir' | 'symlink' | 'hardlink' | 'char' | 'block' | 'fifo';
  /** Permission bits, setuid (0o4000), setgid (0o2000) and sticky (0o1000) included. */
  mode?: number;
  uid?: number;
  gid?: number;
  /** A file's content. */
  data?: string;
  /** The target of a link. */
  linkname?: string;
  devmajor?: number;
  devminor?: number;
}

export interface CraftOptions {
  /** An archive (tar, or tar.gz) whose members come first, as they are. */
  base?: string;
  /** Members of `base` to leave out: this name and everything under it. */
  drop?: string[];
  members: Member[];
}

const PROGRAM = `
import io, json, sys, tarfile
spec = json.load(sys.stdin)
types = {'file': tarfile.REGTYPE, 'dir': tarfile.DIRTYPE, 'symlink': tarfile.SYMTYPE,
         'hardlink': tarfile.LNKTYPE, 'char': tarfile.CHRTYPE, 'block': tarfile.BLKTYPE,
         'fifo': tarfile.FIFOTYPE}
drop = spec.get('drop') or []
with tarfile.open(fileobj=sys.stdout.buffer, mode='w|', format=tarfile.GNU_FORMAT) as out:
    if spec.get('base'):
        with tarfile.open(spec['base'], 'r:*') as base:
            for m in base:
                name = m.name.rstrip('/')
                if any(name == d or name.startswith(d + '/') for d in drop):
                    continue
                out.addfile(m, base.extractfile(m) if m.isreg() else None)
    for s in spec['members']:
        ti = tarfile.TarInfo(s['name'])
        ti.type = types[s.get('type', 'file')]
        ti.mode = s.get('mode', 0o755 if s.get('type') == 'dir' else 0o644)
        ti.uid = s.get('uid', 0)
        ti.gid = s.get('gid', 0)
        ti.uname = ti.gname = ''
        ti.mtime = 1700000000
        ti.linkname = s.get('linkname', '')
        ti.devmajor = s.get('devmajor', 0)
        ti.devminor = s.get('devminor', 0)
        data = s.get('data', '').encode()
        ti.size = len(data) if ti.type == tarfile.REGTYPE else 0
        out.addfile(ti, io.BytesIO(data) if ti.type == tarfile.REGTYPE else None)
`;

/** An uncompressed tar: the members of `base` (less `drop`), then `members`. */
export function craftTar(options: CraftOptions): Buffer {
  return execFileSync('python3', ['-c', PROGRAM], {
    input: JSON.stringify(options),
    maxBuffer: 1 << 30,
  });
}
