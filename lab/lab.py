#!/usr/bin/env python3
"""The lab tool's entry point: ``python3 lab/lab.py COMMAND ...`` (docs/lab.md, the Makefile,
Molecule's create and destroy), the same as ``python3 -m lab COMMAND ...`` from the repository.

Run as a file, Python puts this folder first on the import path, where the name ``lab`` is this
file rather than the package; so this file starts the package as a module from the repository
root, which is where ``python3 -m lab`` finds it (and labkit next to it). Standard library only:
it runs as root before any virtualenv exists.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATH_OPTIONS = ("--state-dir", "--machines-dir")


def absolute_paths(argv: list[str]) -> list[str]:
    """The path options made absolute: they name the caller's folders, not the repository's."""
    out = list(argv)
    for i, arg in enumerate(out):
        name, sep, value = arg.partition("=")
        if sep and name in PATH_OPTIONS:
            out[i] = f"{name}={os.path.abspath(value)}"
        elif i and out[i - 1] in PATH_OPTIONS:
            out[i] = os.path.abspath(arg)
    return out


if __name__ == "__main__":
    args = absolute_paths(sys.argv[1:])
    os.chdir(ROOT)
    os.execv(sys.executable, [sys.executable, "-m", "lab", *args])  # noqa: S606 (this Python, the tool)
