"""Files that other processes may read or write at the same time, the digests that name them, and the commit of the
source itself (torch-free).

`atomic_save` / `atomic_write` write a file so that a reader never sees it half-written and two writers never
clobber each other's temporary file: each writes its own uniquely named temporary file beside the target and
renames it over the target (atomic on POSIX). Files that several processes may write at once (the caches: cells
running several per GPU, or Ray tasks on one machine, may all write the same reference file) are also written
under an exclusive lock on `<target>.lock` (`shared=True`), so the writes take turns.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path


def user_cache() -> Path:
    """genbench's folder in the user's cache directory (platformdirs: $XDG_CACHE_HOME/genbench or ~/.cache/genbench
    on Linux, ~/Library/Caches/genbench on macOS, %LOCALAPPDATA%\\genbench\\Cache on Windows)."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("genbench", appauthor=False))


def cache_dir() -> Path:
    """Where genbench keeps what it can recompute and every run may share, whichever folder it runs from: the domain
    encoders, the real-feature and copying caches. $BENCH_CACHE, else `user_cache()/features`. (Datasets: $BENCH_DATA,
    else `user_cache()/data`; downloaded encoder weights: torch's hub cache, shared with torch-fidelity.)"""
    if os.environ.get("BENCH_CACHE"):
        return Path(os.environ["BENCH_CACHE"]).expanduser()
    return user_cache() / "features"


def unwritable(folder: Path) -> str | None:
    """Why `folder` cannot be written (created if missing), or None when it can."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        return e.strerror or type(e).__name__
    return None


def file_lock(path: Path):
    """An exclusive lock on `<path>.lock` (filelock: fcntl on POSIX, msvcrt on Windows)."""
    from filelock import FileLock

    return FileLock(str(path.with_name(path.name + ".lock")))


def atomic_write(path: Path, write: Callable[[Path], None], shared: bool = False) -> None:
    """`write(tmp)` fills a temporary file that then replaces `path` in one rename (under the file's lock when
    `shared`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path) if shared else contextlib.nullcontext():
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        try:
            write(tmp)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)


def atomic_save(obj, path: Path, shared: bool = False) -> None:
    """torch.save(obj, path), atomically (torch imported here: this module stays importable without it)."""
    import torch

    atomic_write(path, lambda tmp: torch.save(obj, tmp), shared)


def cached(path: Path, key: dict, compute: Callable[[], dict]) -> tuple[dict, bool]:
    """The keyed cache every cache of genbench goes through (reference features, the copying test's cells, the domain
    encoder): the value saved at `path` when the file holds `key` (True), else `compute()`, saved at `path` with its
    key, atomically and under the file's lock (False). The key is stored in the file and compared on load, so a file
    never serves another key: a stale or colliding one is recomputed and replaced."""
    import torch

    path = Path(path)
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("key") == key:
            return saved["value"], True
    value = compute()
    atomic_save({"key": key, "value": value}, path, shared=True)
    return value, False


def json_digest(obj, length: int = 16) -> str:
    """The first `length` hex digits of the sha256 of `obj` as canonical JSON (sorted keys): a key for a spec."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:length]


def bytes_digest(chunks: Iterable[bytes | str]) -> str:
    """The sha256 hex digest of a sequence of byte strings (str chunks are UTF-8 encoded): content digests of
    datasets, weights and features."""
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk.encode() if isinstance(chunk, str) else chunk)
    return h.hexdigest()


def file_digest(path: Path) -> str:
    """The sha256 hex digest of a file's bytes, read a megabyte at a time."""
    with open(path, "rb") as f:
        return bytes_digest(iter(lambda: f.read(1 << 20), b""))


@functools.cache
def source_commit() -> str | None:
    """The git commit of genbench's source tree when it runs from a checkout; None otherwise (an installed wheel)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
