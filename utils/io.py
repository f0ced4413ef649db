"""Files: atomic writes, resumable parts of a long stage, and one run per output folder.

Every file is written under a temporary name in its folder, then renamed, so a killed run never
leaves a half-written file that a later step could mistake for a result. A write that fails
(disk full, folder not writable) stops the run with one line; rerun the same command once the
problem is fixed and it resumes.
"""
import errno
import fcntl
import io
import json
import os
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from utils.errors import UserError

LOCK_NAME = ".lock"


def atomic_write_bytes(path, data: bytes) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise _write_error(path, err) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise _write_error(path, err) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _write_error(path: Path, err: OSError) -> UserError:
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return UserError(f"cannot write output: {err.strerror}", str(path),
                         "free some space, then rerun the same command: finished work is kept")
    return UserError(f"cannot write output: {err.strerror}", str(path),
                     "choose a writable --output_dir (a rerun resumes)")


def save_json(path, obj) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def save_npy(path, array: np.ndarray) -> Path:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return atomic_write_bytes(path, buf.getvalue())


def save_pt(path, obj) -> Path:
    """Save tensors, numbers and strings (loadable with torch.load(weights_only=True))."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def save_png(path, image: Image.Image | np.ndarray) -> Path:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def write_metrics(output_dir, metrics: dict, record: dict, **work) -> tuple[Path, dict]:
    """<output_dir>/metrics.json: the numbers, and the run's record with how the run went (`work`,
    e.g. encoder_passes, which depend on the number of processes and on what a resumed run found
    done), kept apart from the results. Returns the file and what was written."""
    written = {**metrics, "run": {**record, **work}}
    return save_json(Path(output_dir) / "metrics.json", written), written


def load_json(path, what: str, fix: str):
    """A JSON file this project wrote; a damaged or foreign one is one clear line."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"unreadable {what}", str(path), f"{fix} ({str(err).splitlines()[0][:120]})") from None


def pack_masks(masks: list[np.ndarray]) -> dict:
    """Boolean masks of any sizes as one bit-packed uint8 tensor plus their shapes (8x smaller
    than bool, and storable in a weights_only .pt)."""
    return {
        "bits": torch.from_numpy(np.concatenate([np.packbits(m.ravel()) for m in masks])),
        "shapes": torch.tensor([m.shape for m in masks], dtype=torch.int64).reshape(-1, 2),
    }


def unpack_masks(packed: dict) -> list[np.ndarray]:
    bits, masks, start = packed["bits"].numpy(), [], 0
    for height, width in packed["shapes"].tolist():
        size = height * width
        length = (size + 7) // 8
        masks.append(np.unpackbits(bits[start:start + length], count=size).astype(bool).reshape(height, width))
        start += length
    return masks


class Parts:
    """The finished chunks of a long stage, one file per chunk in `<folder>/`, with the settings
    they were made with. A rerun with the same settings skips the finished chunks; other settings
    are an error (parts of two runs must never mix)."""

    def __init__(self, folder, settings: dict):
        self.folder, self.settings = Path(folder), json.loads(json.dumps(settings))

    def check(self) -> None:
        path = self.folder / "settings.json"
        if path.is_file() and load_json(path, "parts settings", "delete the parts folder") != self.settings:
            raise UserError("this --output_dir holds parts of a run with other settings", str(path),
                            f"use another --output_dir, or delete its {self.folder.name}/ folder")

    def start(self) -> None:
        self.check()
        save_json(self.folder / "settings.json", self.settings)

    def path(self, chunk: int) -> Path:
        return self.folder / f"chunk_{chunk:05d}.npz"

    def done(self, chunk: int) -> bool:
        return self.path(chunk).is_file()

    def save(self, chunk: int, **arrays: np.ndarray) -> None:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(self.path(chunk), buf.getvalue())

    def load(self, chunk: int) -> dict[str, np.ndarray]:
        with np.load(self.path(chunk), allow_pickle=False) as saved:
            return {name: saved[name] for name in saved.files}


class FileLock:
    """An exclusive lock on a file, between processes and between the threads of one (a page's
    requests), released when the process ends, however it ends (the kernel drops the lock of a
    killed process, so a stale lock never blocks). A POSIX record lock, not flock: forked
    DataLoader workers do not inherit it, so a killed run's orphaned workers cannot keep it; it
    does not exclude the threads of its process, which a lock per file in the process does.
    `wait`: wait for the holder to release it; else raise `busy` at once."""
    _in_process: dict[str, threading.Lock] = {}
    _registry = threading.Lock()

    def __init__(self, path, wait: bool = True, busy: UserError | None = None):
        self.path, self.wait, self.busy = Path(path), wait, busy
        self.file = None
        with FileLock._registry:
            self.thread_lock = FileLock._in_process.setdefault(str(self.path.absolute()), threading.Lock())

    def __enter__(self):
        if not self.thread_lock.acquire(blocking=self.wait):
            raise self.busy
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.path, "a+")
        except OSError as err:
            self.thread_lock.release()
            raise _write_error(self.path, err) from None
        try:
            fcntl.lockf(self.file, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except OSError as err:
            self.file.close()
            self.thread_lock.release()
            if err.errno not in (errno.EACCES, errno.EAGAIN) or self.busy is None:
                raise _write_error(self.path, err) from None
            raise self.busy from None
        return self

    def __exit__(self, *exc):
        fcntl.lockf(self.file, fcntl.LOCK_UN)
        self.file.close()
        self.thread_lock.release()
        return False


class OutputLock(FileLock):
    """One run at a time per output folder: a second run stops with one line."""

    def __init__(self, folder):
        super().__init__(Path(folder) / LOCK_NAME, wait=False, busy=UserError(
            "another run is writing to this folder", str(folder), "wait for it to finish, or use another --output_dir"))
