"""Configuration keys and atomic writes.

Every long stage writes its outputs under a folder named by a key of the configuration that made
them, so changing one parameter recomputes only what depends on it. Files are written to a
temporary name in the same folder and renamed into place, so an interrupted run never leaves a
half-written file that a later run would read as complete.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator


def config_key(config: dict[str, Any], length: int = 12) -> str:
    """A short, stable hash of a JSON-serialisable configuration (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:length]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The sha256 hex digest of a file, read in chunks (large archives stay out of memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


class DiskFullError(OSError):
    """No space left while writing ``path``; nothing was written there (``errno`` is ``ENOSPC``)."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Works for files and folders (e.g. a ``save_pretrained`` checkpoint). On any error, including
    ``KeyboardInterrupt`` and a full disk, the temporary is removed and ``path`` is untouched; a
    full disk is raised as :class:`DiskFullError`, which names ``path`` and the fix. A process
    killed outright (``kill -9``, power loss) cannot clean up: its temporary, named after the host
    and process id, is removed by the next write of the same ``path`` once that process is gone.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    owner = f"{_HOST}-{os.getpid()}"  # at call time: a forked child is another owner
    tmp = Path(tempfile.mkdtemp(prefix=f"{_temporary_prefix(path)}{owner}-", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if path.is_dir() and target.is_dir():
            _remove(path)
        os.replace(target, path)
    except BaseException as err:
        if isinstance(err, Exception) and _disk_full(err, path.parent):
            _remove(tmp)
            raise DiskFullError(
                errno.ENOSPC,
                f"No space left on device while writing {path}; nothing was written there and the partial "
                "temporary was removed. Free space on that disk, or point cache_dir / results_dir (or "
                "UNIDETOX_DATA_DIR) at a disk with room, then rerun: finished steps are kept.",
            ) from err
        raise
    finally:
        _remove(tmp)


# The temporaries of one process: ``.<name>.<host>-<pid>-<random>.tmp`` beside the target.
_HOST = socket.gethostname().split(".")[0][:32] or "host"


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}."


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of ``path`` left by killed processes of this host; return them.

    Only temporaries whose process no longer exists are removed, so a concurrent writer of the same
    path (another notebook, another engineer) keeps its own.
    """
    path = Path(path)
    removed = []
    prefix = _temporary_prefix(path)
    try:
        candidates = [p for p in path.parent.iterdir() if p.name.startswith(prefix) and p.name.endswith(".tmp")]
    except OSError:
        return removed
    for candidate in candidates:
        owner = candidate.name[len(prefix):-len(".tmp")]
        parts = owner.rsplit("-", 2)  # host-pid-random (mkdtemp's random part has no "-")
        if len(parts) != 3 or parts[0] != _HOST or not parts[1].isdigit():
            continue
        if not _process_alive(int(parts[1])):
            _remove(candidate)
            removed.append(candidate)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _disk_full(err: BaseException, folder: Path) -> bool:
    """Whether ``err`` (or what caused it) is a full disk: ``ENOSPC``/``EDQUOT``, or a library's
    wrapped message for it (safetensors' ``StorageFull``, torch's "file write failed" on a full disk)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            return True
        text = str(err)
        if "No space left on device" in text or "StorageFull" in text:
            return True
        if "file write failed" in text:  # torch.save's PytorchStreamWriter hides the errno
            try:
                return shutil.disk_usage(folder).free < (64 << 20)
            except OSError:
                return False
        err = err.__cause__ or err.__context__
    return False


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_csv_atomic(frame, path: str | os.PathLike, **to_csv_kwargs) -> Path:
    """Write a pandas frame as CSV atomically (``index=False`` unless told otherwise)."""
    to_csv_kwargs.setdefault("index", False)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, **to_csv_kwargs)
    return Path(path)
