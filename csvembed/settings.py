"""Where csvembed finds Redis, the store and the model: flags, then environment, then defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from csvembed import defaults
from csvembed.errors import InputError

ENV_HOME = "CSVEMBED_HOME"
ENV_REDIS_URL = "CSVEMBED_REDIS_URL"
ENV_DB = "CSVEMBED_DB"
ENV_MODEL = "CSVEMBED_MODEL"
ENV_PRECISION = "CSVEMBED_PRECISION"
PRECISIONS = ("fp32", "int8")


def default_home() -> Path:
    """The data directory: the store and the embedded Redis live here unless told otherwise."""
    if os.environ.get(ENV_HOME):
        return Path(os.environ[ENV_HOME])
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "csvembed"


def private_dir(path: Path) -> Path:
    """Create `path` readable by its owner alone (0700), since it will hold every submitted row.

    Missing parents get the usual mode. A folder that already exists is left as it is: it may be
    one the user chose and shares on purpose; the folders csvembed owns inside it are tightened
    where they are made.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    return path


@dataclass(frozen=True)
class Settings:
    """The three things every command needs to agree on, so that they find the same work."""

    home: Path
    # A SQLite file path, or a postgresql:// URL.
    db: str
    model: str
    # None means "the embedded redis-server in home", started on demand.
    redis_url: str | None = None
    # fp32, or int8 (ONNX Runtime only): a different model in effect, with different vectors.
    precision: str = "fp32"

    def __post_init__(self) -> None:
        """Refuse a SQLite URI before anything is opened: the store takes every --db but a postgresql:// URL
        as a path, so `file:x.db?mode=ro` made a folder `file:` and a file `x.db?mode=ro` in it."""
        if self.db.startswith("file:"):
            raise InputError(f"--db (or CSVEMBED_DB) {self.db!r} is a SQLite URI, which csvembed does not take:"
                             " pass the database file's path")

    @property
    def model_id(self) -> str:
        """The model as stored rows record it and submit hashes it: an int8 model is another model."""
        return self.model if self.precision == "fp32" else f"{self.model}+{self.precision}"

    @classmethod
    def resolve(cls, redis_url: str | None = None, db: str | None = None, model: str | None = None,
                precision: str | None = None) -> Settings:
        """Each value as given, else its CSVEMBED_* variable, else the default: what the CLI's flags resolve
        to, so that a program (or a plain RQ worker's row job) finds the same deployment."""
        home = default_home()
        return cls(
            home=home,
            db=db or os.environ.get(ENV_DB) or str(home / "csvembed.db"),
            model=model or os.environ.get(ENV_MODEL) or defaults.MODEL_NAME,
            redis_url=redis_url or os.environ.get(ENV_REDIS_URL) or None,
            precision=precision or os.environ.get(ENV_PRECISION) or "fp32",
        )
