"""Where the public data sets live: `--data-dir`, else `$RADIT_DATA`, else `../shared/data`.

Evaluation tasks (`radit.eval.tasks`) and instruction sources (`radit.data.instructions`) read the
same folder, each file in its original release format.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "RADIT_DATA"
DEFAULT_DATA_DIR = "../shared/data"


def resolve_data_dir(data_dir: str | Path | None = None, *, holds: str, instead: str) -> Path:
    """`data_dir`, else `$RADIT_DATA`, else `../shared/data`.

    Raises:
        FileNotFoundError: the folder is missing; the message says where the path came from, what the
            folder `holds` and what the user can do `instead`.
    """
    if data_dir:
        where, path = "--data-dir", Path(data_dir)
    elif os.environ.get(DATA_ENV):
        where, path = f"${DATA_ENV}", Path(os.environ[DATA_ENV])
    else:
        where, path = "the default", Path(DEFAULT_DATA_DIR)
    if not path.is_dir():
        raise FileNotFoundError(f"data folder {path} ({where}) does not exist. It holds {holds}. "
                                f"Point --data-dir (or ${DATA_ENV}) at such a folder, or {instead}")
    return path


def require(path: Path, what: str) -> Path:
    """`path` if it exists, else an error naming `what` was looked for in the data folder."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: {what} not found in the data folder; check --data-dir (or ${DATA_ENV})")
    return path
