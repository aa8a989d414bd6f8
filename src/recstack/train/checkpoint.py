"""Checkpoint store: full and partial training checkpoints that survive crashes and bit rot.

Layout under a store root (one directory per checkpoint, named so that listing sorts by step)::

    step-00000120-full/        a full checkpoint
        manifest.json          written last: format, step, kind, meta, and {bytes, sha256} per file
        model.pt, optim.pt ... one torch.save file per named part
    step-00000150-partial/     a partial checkpoint: selected embedding rows
        rows.t03.pt            {"ids": int64 [n], "values": [n, dim], ...} for table t03

A checkpoint is built in a hidden temporary directory, every file fsynced, and renamed into place
only when complete (`recstack.io.atomic_dir`): a process killed mid-write leaves a hidden
`.step-...partial` directory that listing ignores and `clean()` removes, never a checkpoint that
looks complete. Loading checks every file's size and SHA-256 against the manifest and refuses a
checkpoint that does not match, naming the file; `load_latest` then falls back to the previous
good checkpoint and reports what it skipped.

`BackgroundSaver` snapshots the state on the caller's thread (a memory copy) and writes it on a
worker thread, so training waits only for the copy; it records both times.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from recstack.errors import DataError
from recstack.io import atomic_dir

FORMAT = 1
MANIFEST = "manifest.json"
KINDS = ("full", "partial")
_NAME = re.compile(r"^step-(\d{8,})-(full|partial)$")
_PART = re.compile(r"^[A-Za-z0-9_.-]+$")
_CHUNK = 8 << 20


class CheckpointError(DataError):
    """A checkpoint is missing, torn or corrupt; the message names the file."""


@dataclass(frozen=True)
class CheckpointInfo:
    """One published checkpoint, as its manifest describes it."""

    path: Path
    step: int
    kind: str
    files: dict[str, dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return sum(int(f["bytes"]) for f in self.files.values())

    @property
    def parts(self) -> list[str]:
        return [name[:-3] for name in self.files if name.endswith(".pt")]


class _HashingWriter:
    """A binary file that hashes what goes through it: the checksum costs no second read."""

    def __init__(self, path: Path) -> None:
        self._f = open(path, "wb")  # noqa: SIM115 -- closed by close()
        self._h = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes | memoryview) -> int:
        self._h.update(data)
        self.bytes += len(data)
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> str:
        self._f.close()
        return self._h.hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _snapshot(obj: Any) -> Any:
    """A deep copy of every tensor in a nested dict/list/tuple structure (on CPU, detached)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _snapshot(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_snapshot(v) for v in obj)
    return obj


class CheckpointStore:
    """Atomic, checksummed checkpoints under `root`; keeps the newest `keep` full ones (None: all).

    Partial checkpoints older than the oldest kept full checkpoint are pruned with it.
    """

    def __init__(self, root: str | Path, keep: int | None = 3) -> None:
        if keep is not None and keep < 1:
            raise ValueError(f"keep must be at least 1 (or None), got {keep}")
        self.root = Path(root)
        self.keep = keep
        self.skipped: list[str] = []  # why load_latest passed over checkpoints, newest call only

    # ------------------------------------------------------------ writing
    def save(
        self, step: int, parts: dict[str, Any], kind: str = "full", meta: dict[str, Any] | None = None
    ) -> CheckpointInfo:
        """Write `parts` (name -> object for torch.save) as one checkpoint of `step`; returns it.

        An existing checkpoint of the same step and kind is replaced only once the new one is
        complete.
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if not parts:
            raise ValueError("a checkpoint needs at least one part")
        for name in parts:
            if not _PART.match(name):
                raise ValueError(f"part name {name!r}: use letters, digits, '_', '-', '.'")
        dest = self.root / f"step-{step:08d}-{kind}"
        files: dict[str, dict[str, Any]] = {}
        with atomic_dir(dest) as tmp:
            for name, obj in parts.items():
                f = tmp / f"{name}.pt"
                w = _HashingWriter(f)
                try:
                    torch.save(obj, w)  # type: ignore[arg-type]
                finally:
                    digest = w.close()
                if f.stat().st_size != w.bytes:  # the writer saw every byte (no seek-and-patch)
                    digest = _sha256(f)
                files[f.name] = {"bytes": f.stat().st_size, "sha256": digest}
            manifest = {"format": FORMAT, "step": step, "kind": kind, "created": time.time(),
                        "meta": meta or {}, "files": files}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str) + "\n")
        info = CheckpointInfo(dest, step, kind, files, dict(meta or {}))
        self.prune()
        return info

    def save_rows(
        self, step: int, rows: dict[str, dict[str, torch.Tensor]], meta: dict[str, Any] | None = None
    ) -> CheckpointInfo:
        """A partial checkpoint: per table, {"ids": int64 [n], "values": [n, ...], ...more row state}."""
        for table, r in rows.items():
            if "ids" not in r or "values" not in r:
                raise ValueError(f"rows[{table!r}] needs 'ids' and 'values'")
            n = r["ids"].numel()
            for key, t in r.items():
                if t.shape[0] != n:
                    raise ValueError(f"rows[{table!r}][{key!r}] has {t.shape[0]} rows for {n} ids")
        return self.save(step, {f"rows.{t}": r for t, r in rows.items()}, kind="partial", meta=meta)

    # ------------------------------------------------------------ reading
    def checkpoints(self, kind: str | None = None) -> list[CheckpointInfo]:
        """Published checkpoints (oldest first) whose manifest parses; unreadable ones are skipped
        here and reported by `load_latest`."""
        return [c for c in self._scan()[0] if kind is None or c.kind == kind]

    def _scan(self) -> tuple[list[CheckpointInfo], list[str]]:
        good: list[CheckpointInfo] = []
        problems: list[str] = []
        if not self.root.is_dir():
            return good, problems
        for d in sorted(self.root.iterdir()):
            m = _NAME.match(d.name)
            if not m or not d.is_dir():
                continue
            try:
                good.append(self._read_manifest(d))
            except CheckpointError as e:
                problems.append(str(e))
        good.sort(key=lambda c: (c.step, c.kind == "full"))
        return good, problems

    def _read_manifest(self, d: Path) -> CheckpointInfo:
        mf = d / MANIFEST
        try:
            man = json.loads(mf.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{mf}: missing (checkpoint incomplete)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{mf}: unreadable ({e})") from None
        try:
            if man["format"] != FORMAT:
                raise CheckpointError(f"{mf}: format {man['format']} is not {FORMAT}")
            files = {str(k): {"bytes": int(v["bytes"]), "sha256": str(v["sha256"])} for k, v in man["files"].items()}
            return CheckpointInfo(d, int(man["step"]), str(man["kind"]), files, dict(man.get("meta") or {}))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CheckpointError(f"{mf}: malformed manifest ({type(e).__name__}: {e})") from None

    def verify(self, info: CheckpointInfo) -> None:
        """Raise CheckpointError naming the first file that is missing, truncated or altered."""
        for name, want in info.files.items():
            f = info.path / name
            try:
                size = f.stat().st_size
            except FileNotFoundError:
                raise CheckpointError(f"{f}: missing from checkpoint step {info.step}") from None
            if size != want["bytes"]:
                raise CheckpointError(f"{f}: {size} bytes, manifest says {want['bytes']} (truncated or replaced)")
            if _sha256(f) != want["sha256"]:
                raise CheckpointError(f"{f}: checksum mismatch (corrupt)")

    def load(
        self, info: CheckpointInfo, parts: list[str] | None = None, map_location: str | torch.device = "cpu",
        verify: bool = True,
    ) -> dict[str, Any]:
        """The named parts (default all) of a checkpoint, after verifying every file."""
        if verify:
            self.verify(info)
        names = parts if parts is not None else info.parts
        out: dict[str, Any] = {}
        for name in names:
            f = info.path / f"{name}.pt"
            if f"{name}.pt" not in info.files:
                raise CheckpointError(f"{f}: checkpoint step {info.step} has no part {name!r} (has {info.parts})")
            try:
                out[name] = torch.load(f, map_location=map_location, weights_only=True)
            except (RuntimeError, ValueError, EOFError, OSError, pickle.UnpicklingError) as e:
                # a file that verifies but does not load (written by something else) is refused too
                raise CheckpointError(f"{f}: cannot be loaded ({type(e).__name__}: {e})") from None
        return out

    def load_latest(
        self, kind: str = "full", before: int | None = None, on_skip: Callable[[str], None] | None = None,
        agree: Callable[[Any], list[Any]] | None = None,
    ) -> tuple[CheckpointInfo, dict[str, Any]] | None:
        """The newest good checkpoint of `kind` (step < `before` if given) and its parts, or None.

        Checkpoints that fail verification are skipped; each reason (naming the file) goes to
        `on_skip` and is kept in `self.skipped`.

        `agree` makes this one rank's store of a multi-process run: it must return every rank's
        value of its argument (an all-gather, called in the same order on every rank). Only steps
        that every rank has are candidates, and a step is taken only if it loads on every rank, so
        all ranks resume from the same step.
        """
        good, problems = self._scan()
        self.skipped = []

        def skip(why: str) -> None:
            self.skipped.append(why)
            if on_skip:
                on_skip(why)

        for p in problems:
            skip(p)
        cands = [c for c in reversed(good) if c.kind == kind and (before is None or c.step < before)]
        if agree is not None:
            common = set.intersection(*(set(steps) for steps in agree([c.step for c in cands])))
            for c in cands:
                if c.step not in common:
                    skip(f"{c.path}: step {c.step} is not complete on every rank")
            cands = [c for c in cands if c.step in common]
        for info in cands:
            try:
                got: tuple[CheckpointInfo, dict[str, Any]] | None = (info, self.load(info))
            except CheckpointError as e:
                got = None
                skip(str(e))
            if agree is not None and not all(agree(got is not None)):
                if got is not None:
                    skip(f"{info.path}: step {info.step} failed to load on another rank")
                continue
            if got is not None:
                return got
        return None

    # ------------------------------------------------------------ housekeeping
    def prune(self) -> list[Path]:
        """Delete full checkpoints beyond `keep` and partial ones older than the oldest kept full one."""
        if self.keep is None:
            return []
        good = self.checkpoints()
        fulls = [c for c in good if c.kind == "full"]
        if len(fulls) <= self.keep:
            return []
        oldest_kept = fulls[-self.keep].step
        gone = [c.path for c in good if c.step < oldest_kept]
        for p in gone:
            shutil.rmtree(p, ignore_errors=True)
        return gone

    def clean(self) -> list[Path]:
        """Remove leftovers of interrupted writes (hidden temporary directories)."""
        if not self.root.is_dir():
            return []
        gone = [p for p in self.root.iterdir() if p.name.startswith(".step-") and p.is_dir()]
        for p in gone:
            shutil.rmtree(p, ignore_errors=True)
        return gone


class BackgroundSaver:
    """Writes checkpoints on a worker thread; the caller only waits for an in-memory snapshot.

    At most one write is in flight: `submit` first waits for the previous one. A failed write
    raises in the next `submit`, `wait` or `close`. `stats` holds the time the caller spent
    (snapshot and waiting for the previous write) and the worker's write time.
    """

    def __init__(self, store: CheckpointStore) -> None:
        self.store = store
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._last: CheckpointInfo | None = None
        self.stats = {"saves": 0, "snapshot_s": 0.0, "blocked_s": 0.0, "write_s": 0.0, "bytes": 0}

    def submit(self, step: int, parts: dict[str, Any], kind: str = "full", meta: dict[str, Any] | None = None) -> None:
        t0 = time.perf_counter()
        self.wait()
        t1 = time.perf_counter()
        snap = _snapshot(parts)
        t2 = time.perf_counter()
        self.stats["blocked_s"] += t1 - t0
        self.stats["snapshot_s"] += t2 - t1

        def work() -> None:
            t = time.perf_counter()
            try:
                info = self.store.save(step, snap, kind=kind, meta=meta)
            except BaseException as e:  # noqa: BLE001 -- re-raised on the caller's thread by wait()
                self._error = e
                return
            self._last = info
            self.stats["write_s"] += time.perf_counter() - t
            self.stats["bytes"] += info.bytes
            self.stats["saves"] += 1

        self._thread = threading.Thread(target=work, name=f"checkpoint-{step}", daemon=True)
        self._thread.start()

    def wait(self) -> CheckpointInfo | None:
        """Block until the write in flight (if any) is published; returns the last checkpoint written."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err
        return self._last

    def close(self) -> CheckpointInfo | None:
        return self.wait()
