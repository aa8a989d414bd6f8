"""Atomic file and directory writes, run directories, and the one JSON reader.

Anything a user would hate to lose goes to a temporary name first, is fsynced, and is renamed
into place, so an interrupted run never leaves a half-written file that looks complete.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from recstack.errors import DataError


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary sibling of `path`; on clean exit fsync and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "model_dump"):
        return o.model_dump()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a directory under a temporary sibling name; rename it to `path` only on success.

    An existing `path` is replaced only after the new one is complete. On any error (or Ctrl-C)
    the temporary directory is removed, so nothing half-written is left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def append_jsonl(path: str | Path, row: dict[str, Any]) -> None:
    """Append one JSON line (metrics logs); a torn last line is tolerated by readers."""
    with open(path, "a") as f:
        f.write(json.dumps(row, default=_json_default) + "\n")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # torn last line of an interrupted run
    return rows


def save_figure(fig: Any, path: str | Path, dpi: int = 120) -> Path:
    """Write a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi)
    plt.close(fig)
    return path


def read_bytes(path: str | Path, what: str = "file") -> bytes:
    """A file's bytes; a missing, unreadable or directory path is a one-line DataError naming it."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a {what}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read {what} ({e.strerror or e})") from None


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """Parsed JSON (gzip-compressed or plain); a missing, unreadable or malformed file is a one-line
    DataError naming it (and the line)."""
    path = Path(path)
    raw = read_bytes(path, what)
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            raise DataError(f"{path}: truncated or corrupt gzip ({e})") from None
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise DataError(f"{path}: cannot read {what} (binary content, not JSON)") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None


def read_keyed(path: str | Path, key: Any) -> dict[str, Any] | None:
    """A measurement cache record written by `write_keyed`, or None when the file is missing,
    unreadable or was measured under another key (a stale cache is re-measured, never an error)."""
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) and d.get("key") == key else None


def write_keyed(path: str | Path, key: Any, **record: Any) -> None:
    """Write a measurement cache record {key, **record, measured_at} atomically."""
    atomic_write_json(path, {"key": key, **record, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
