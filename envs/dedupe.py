"""Hard-link the files of one virtualenv that are byte-identical to files of the others.

The converter environments hold the same large wheels more than once (torch 2.14.1 with its CUDA
libraries in envs/torchvision and envs/nobuco, TensorFlow 2.21 in .venv, envs/tf2onnx and
envs/onnx2tf): about 20 GB in all, 12 GB once the copies are links. A fresh CI machine does not
always have 20 GB free; one run stopped with "No space left on device" at the fourth environment.

Usage: python3 envs/dedupe.py NEW_VENV [OTHER_VENV ...]   (stdlib only; any Python 3)

Only regular files of at least 64 KiB are considered; a file is linked only when its size and every
byte match, so nothing changes what any environment imports. Installs replace files rather than
writing into them (pip removes and extracts, Python writes .pyc files by rename), so a link is never
modified through one environment under another's feet. Prints one line: what it linked and saved.
"""

from __future__ import annotations

import filecmp
import os
import sys

MIN_SIZE = 64 * 1024


def _files(root: str):
    for top, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(top, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if os.path.isfile(path) and not os.path.islink(path) and st.st_size >= MIN_SIZE:
                yield path, st


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    new, others = argv[0], [o for o in argv[1:] if os.path.isdir(o) and os.path.abspath(o) != os.path.abspath(argv[0])]
    index: dict[tuple[str, int], list[tuple[str, os.stat_result]]] = {}
    for other in others:
        for path, st in _files(other):
            index.setdefault((os.path.basename(path), st.st_size), []).append((path, st))
    linked = saved = 0
    for path, st in _files(new):
        for other, ost in index.get((os.path.basename(path), st.st_size), ()):
            if (ost.st_dev, ost.st_ino) == (st.st_dev, st.st_ino):
                break
            # a link shares the mode too: a file whose mode differs stays a copy
            if (ost.st_dev, ost.st_mode) != (st.st_dev, st.st_mode) or not filecmp.cmp(path, other, shallow=False):
                continue
            tmp = path + ".bnspec-link"
            try:
                os.link(other, tmp)
                os.replace(tmp, path)
            except OSError:
                if os.path.lexists(tmp):
                    os.unlink(tmp)
                continue
            linked += 1
            saved += st.st_size
            break
    print(f"{new}: {linked} files hard-linked to identical ones in {len(others)} other environments, "
          f"{saved / 2**30:.2f} GiB saved")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
