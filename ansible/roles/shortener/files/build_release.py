#!/usr/bin/env python3
"""Packs the service code into a reproducible tar.gz on the controller.

Usage: build_release.py SRC_DIR OUT_DIR

The archive holds SRC_DIR/app (without byte code) and SRC_DIR/requirements.txt with fixed
owners, modes and timestamps, so the same code always gives the same bytes and therefore the
same release id: a converge with unchanged code changes nothing on the hosts. Prints a JSON
object with the release id and the archive path.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import sys
import tarfile
from pathlib import Path

SKIP_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
SKIP_SUFFIXES = (".pyc", ".pyo", ".swp", "~")


def members(src: Path) -> list[Path]:
    found: list[Path] = [src / "requirements.txt"]
    for root, dirs, files in os.walk(src / "app"):
        # Sorted in place so that the walk, and so the archive, has one order everywhere.
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        found.extend(Path(root) / f for f in sorted(files) if not f.endswith(SKIP_SUFFIXES) and not f.startswith("."))
    return found


def build(src: Path) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in members(src):
            info = tarfile.TarInfo(str(path.relative_to(src)))
            data = path.read_bytes()
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    # mtime=0 and no file name in the gzip header: same input, same bytes.
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    src, out_dir = Path(argv[1]).resolve(), Path(argv[2])
    for needed in (src / "app", src / "requirements.txt"):
        if not needed.exists():
            print(f"{needed} is missing: is shortener_src_dir the repository root?", file=sys.stderr)
            return 1
    blob = build(src)
    release = hashlib.sha256(blob).hexdigest()[:16]
    out_dir.mkdir(parents=True, exist_ok=True)
    archive = out_dir / f"shortener-{release}.tar.gz"
    archive.write_bytes(blob)
    print(json.dumps({"release": release, "archive": str(archive)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
