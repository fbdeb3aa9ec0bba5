"""Compile the C helpers (load generator, yardstick server) into bench/build/.

`build()` runs `cc -O2` on each source whose binary is missing or older than it,
and returns the build directory.  bench/build/ is ignored by git.
"""

from __future__ import annotations

import os
import shutil
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD_DIR = os.path.join(HERE, "build")
PROGRAMS = ("loadgen", "fastserver")


def build() -> str:
    """Compile what is stale; return the directory holding the binaries.

    Raises RuntimeError when no C compiler is found or compilation fails."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler: install one (Debian: apt-get install gcc)")
    os.makedirs(BUILD_DIR, exist_ok=True)
    for name in PROGRAMS:
        source = os.path.join(HERE, f"{name}.c")
        binary = os.path.join(BUILD_DIR, name)
        if os.path.exists(binary) and os.path.getmtime(binary) >= os.path.getmtime(source):
            continue
        result = subprocess.run(
            [compiler, "-O2", "-Wall", "-o", binary, source], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise RuntimeError(f"compiling {source} failed:\n{result.stderr}")
    return BUILD_DIR
