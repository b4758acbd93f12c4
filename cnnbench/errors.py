"""The errors a user can fix, and the one way every tool reports them: `<tool>: error: ...`
on stderr and exit code 2, with no traceback (`HYDRA_FULL_ERROR=1` shows it).

No torch here: a bad value on the command line is reported before torch is imported.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key, the value and a fix."""


class DataError(RuntimeError):
    """Missing, truncated or corrupt data; the message says what and where."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used here; the message says why and what to do."""


class WriteError(OSError):
    """A file could not be written (a full disk, a lost permission); the previous version of
    the file, if any, is kept."""


# what a user can fix from the message alone: no traceback
USER_ERRORS = (ConfigError, DataError, CheckpointError, OSError)


def fail(tool: str, err: BaseException | str) -> NoReturn:
    """Print one `<tool>: error: ...` line (the message may go on for a few) and exit 2."""
    if isinstance(err, BaseException) and os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise err
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one process says it
        print(f"{tool}: error: {err}", file=sys.stderr)
    sys.exit(2)
