"""The one atomic writer: checkpoints, results.json, metrics.csv and the data cache are written
whole or not at all. No torch here; a checkpoint passes `torch.save` as its `write`."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from cnnbench.errors import WriteError


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """A kill at any moment leaves the old file or the new one, never a partial one: `write`
    fills a temporary file in the same folder, which is flushed to disk, then renamed. A
    failed write (a full disk) keeps the old file and raises one WriteError naming the file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise _write_error(path, err) from err
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as a RuntimeError
        Path(tmp).unlink(missing_ok=True)
        raise _write_error(path, err) from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_leftovers(folder: Path) -> None:
    """Remove the temporary files of writes that a kill -9 cut off in `folder` (a resumed run's
    own directory, which no other run writes into): a checkpoint's can be as large as the
    checkpoint."""
    for tmp in Path(folder).glob(".*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()


def _write_error(path: Path, err: Exception) -> WriteError:
    full = isinstance(err, OSError) and err.errno == errno.ENOSPC
    with contextlib.suppress(OSError):  # the folder itself may be gone
        full = full or shutil.disk_usage(path.parent).free < 2**20
    if full:
        cause = "no space left on the device"
    elif isinstance(err, OSError):
        cause = err.strerror or str(err)
    else:
        cause = str(err).splitlines()[0]
    kept = " (the previous file is kept)" if path.exists() else ""
    return WriteError(f"cannot write {path}: {cause}{kept}")


def copy_atomic(source: Path, path: Path) -> None:
    """`path` becomes a copy of `source`, whole or not at all: a hard link where the file
    system has them (no bytes written: `source` is replaced, never changed, by write_atomic),
    else a copy."""
    tmp = path.with_name(f".{path.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(source, tmp)
        except OSError:  # no hard links here (some network and FAT file systems)
            shutil.copyfile(source, tmp)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise _write_error(path, err) from err


def write_text(path: Path, text: str) -> None:
    write_atomic(path, lambda f: f.write(text.encode()))


def finite(value: object) -> object:
    """NaN and inf become None (null), which strict JSON parsers accept."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    return [finite(v) for v in value] if isinstance(value, list | tuple) else value


def write_json(path: Path, obj: dict) -> None:
    """Strict JSON, written whole."""
    write_text(path, json.dumps(finite(obj), indent=2, allow_nan=False) + "\n")
