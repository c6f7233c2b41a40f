"""Durable file I/O, one home for every module: atomic writes of files and folders, JSON lines that
survive a crash mid-append, sha256 of files, CSV tables.

The rules every writer here follows:
- A file or folder that exists under its final name is complete: it was built under a temporary name in
  the same folder and renamed (rename is atomic on POSIX and Windows).
- A JSON-lines file only ever gains whole lines; a line cut short by a crash is dropped when read.
- Every OSError names the path the caller asked for (never a temporary file), so the CLI can report it
  as "PATH: reason" in one line; an OS error that a library reports in an exception of its own (torch.save,
  safetensors) is raised as an OSError too.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from .errors import CratelabError


def name_path(err: OSError, path: str | Path, *, replace: Sequence[str | Path] = ()) -> OSError:
    """Make ``err`` name ``path`` unless it already names another file. ``replace``: temporaries that stand
    for ``path``: an error naming one of them, or a file inside one, names the same file under ``path``
    instead (the user knows the destination; the temporary is gone when the message is read)."""
    if err.filename is None:
        err.filename = str(path)
    else:
        err.filename = _destination(err.filename, path, replace)
    if err.filename2 is not None:  # os.replace(temporary, path) names both: then the destination alone
        err.filename2 = _destination(err.filename2, path, replace)
        if err.filename2 == err.filename:
            err.filename2 = None
    return err


def _destination(name: Any, path: str | Path, temporaries: Sequence[str | Path]) -> Any:
    """``name``, or the same file under ``path`` when it is (inside) one of the temporaries."""
    for tmp in map(str, temporaries):
        if str(name) == tmp or str(name).startswith(tmp + os.sep):
            return str(path) + str(name)[len(tmp):]
    return name


def describe_os_error(err: OSError, where: str | Path | None = None) -> str:
    """An OSError as "PATH: reason". Errors from writing through an open file name no path: then ``where``
    (the folder the command writes to) stands in."""
    reason = err.strerror or str(err) or type(err).__name__
    if isinstance(err, FileExistsError):  # mkdir(exist_ok=True) on a file
        reason = "exists and is not a folder"
    if err.filename is not None:
        path = f"{err.filename} -> {err.filename2}" if err.filename2 is not None else str(err.filename)
        return f"{path}: {reason}"
    return f"{where}: {reason}" if where else reason


# how libraries written in Rust (safetensors, tokenizers) report an OS error, in an exception of their own
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def _reported_os_error(err: BaseException, folder: Path) -> OSError | None:
    """The OS error that a library writing into ``folder`` reported as an exception of another type, else
    None. torch.save to a path loses the reason ("basic_ios::clear: iostream error"): a failure while the
    folder's file system has no space left is taken for what it almost surely is."""
    if isinstance(err, (OSError, CratelabError)):  # these say what is wrong themselves
        return None
    found = _RUST_OS_ERROR.search(str(err))
    if found:
        return OSError(int(found[1]), os.strerror(int(found[1])))
    if folder.is_dir() and shutil.disk_usage(folder).free == 0:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return None


class _WriteErrors:
    """A binary file that remembers the OSError of a failed write: torch.save reports one (a full disk)
    as a RuntimeError, which would otherwise hide the reason."""

    def __init__(self, f: IO[bytes]):
        self._f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self._f.flush()


def _fsync_folder(folder: Path) -> None:
    if hasattr(os, "O_DIRECTORY"):  # make a rename itself durable (POSIX)
        fd = os.open(folder, os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write a file so that readers see either the old complete file or the new complete file. A failed
    write (a full disk, a missing folder) raises OSError naming ``path`` and leaves the old file as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")  # same folder: rename is atomic
    try:
        with open(tmp, "xb") as f:
            sink = _WriteErrors(f)
            try:
                write(sink)
            except Exception as err:
                if sink.error is not None and not isinstance(err, OSError):
                    raise sink.error from None
                raise
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            name_path(err, path, replace=[tmp])
        raise
    _fsync_folder(path.parent)


def write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, value: Any, *, indent: int | None = 2) -> None:
    write_text(path, json.dumps(value, indent=indent, ensure_ascii=False) + "\n")


def read_json(path: str | Path, *, what: str = "file") -> Any:
    """A JSON file's value; a damaged file is one CratelabError naming it."""
    try:
        return json.loads(Path(path).read_bytes())
    except ValueError as err:
        raise CratelabError(f"{path}: not a valid JSON {what} ({err}); delete it to rebuild it") from None


def read_json_object(path: str | Path, *, what: str = "file", keys: Sequence[str] = ()) -> dict[str, Any]:
    """A JSON file holding an object with (at least) ``keys``; anything else is one CratelabError naming it."""
    value = read_json(path, what=what)
    if not isinstance(value, dict):
        raise CratelabError(f"{path}: not a valid {what} (expected a JSON object, got {type(value).__name__}); "
                            "delete it to rebuild it")
    missing = [key for key in keys if key not in value]
    if missing:
        raise CratelabError(f"{path}: not a valid {what} (no {', '.join(map(repr, missing))}); delete it to rebuild it")
    return value


def remove_tree(path: str | Path) -> None:
    """Delete a file, or a folder with everything in it, without ever following a symbolic link: a link
    (``path`` itself or one inside the folder) is removed, never what it points to, which may lie outside
    the folder being cleared. A failed delete raises OSError naming the full path of what could not be
    deleted, so that the caller stops there (no delete is ever skipped silently)."""
    path = Path(path)
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, onerror=_name_entry)  # rmtree removes links inside without following them
        else:
            path.unlink(missing_ok=True)
    except OSError as err:
        raise name_path(err, path) from None


def _name_entry(function: Any, entry: str, exc_info: Any) -> None:
    err = exc_info[1]
    if isinstance(err, OSError):  # rmtree's walk by folder descriptors names an entry relative to its folder
        err.filename = entry
    raise err


@contextmanager
def building_folder(final: str | Path, *, keep_existing: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final``; when the block ends without an error the folder
    replaces ``final`` (with ``keep_existing``, a ``final`` that appeared meanwhile, built by another
    process, is kept and the new one dropped). On an error the temporary folder is removed."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.mkdir(parents=True)
        yield tmp
        if not keep_existing:
            remove_tree(final)
        try:
            os.replace(tmp, final)
        except OSError:
            if not (keep_existing and final.exists()):  # else another process finished first: keep its copy
                raise
        _fsync_folder(final.parent)
    except OSError as err:
        raise name_path(err, final, replace=[tmp])
    except Exception as err:
        reported = _reported_os_error(err, tmp)  # SAELens saves through safetensors and torch.save(path)
        if reported is None:
            raise
        raise name_path(reported, final) from None
    finally:
        with suppress(OSError):  # only our own temporary: the error that stopped the build is the one to report
            remove_tree(tmp)


LOCK_FILE = ".cratelab.lock"


@contextmanager
def folder_lock(folder: str | Path, *, shared: bool = False) -> Iterator[None]:
    """Hold an advisory lock on ``folder`` (created if missing) for the block: exclusive, or shared with
    other shared holders (the scheduled ``ablate --only`` runs of one sweep). A second holder gets a
    CratelabError naming the folder and the holder's PID. The OS releases the lock when the process ends,
    however it ends, so a lock file left by ``kill -9`` never blocks."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks, no protection
        yield
        return
    f = open(path, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(f, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise CratelabError(f"{folder} is in use by another cratelab process (PID {holder}): wait for it to "
                                "end, or use another output folder") from None
        f.truncate(0)  # the PID a later process is told (of the latest holder, for a shared lock)
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield
    finally:
        f.close()  # releases the lock


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_csv(path: str | Path, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
    """A CSV table of ``rows`` with exactly ``columns`` (missing and None values empty, extra keys ignored)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    write_text(path, buf.getvalue())


# ---------------------------------------------------------------- JSON lines

def read_jsonl(path: str | Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """The complete lines of a JSON-lines file. A cut-off or garbled LAST line (a crash mid-write) is
    dropped, and with repair=True cut from the file so appending can go on; damage elsewhere is an error."""
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1  # everything after the last newline is an unfinished line
    lines = data[:end].split(b"\n")[:-1]
    rows = []
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError
            rows.append(row)
        except ValueError:
            if i != len(lines) - 1:
                raise CratelabError(f"{path}: line {i + 1} is not valid JSON (the file is damaged)") from None
            end -= len(line) + 1  # a garbled last line: written partly before a crash
    if repair and end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    return rows


def iter_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """The parsable lines of a JSON-lines file, one at a time (for big files whose damage may be skipped)."""
    path = Path(path)
    if path.is_file():
        with open(path, "rb") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict):
                    yield row


def cut_unfinished_line(path: str | Path) -> None:
    """Truncate a file after its last newline (a line cut off by a crash), reading only its tail."""
    path = Path(path)
    if not path.is_file():
        return
    with open(path, "r+b") as f:
        size = pos = f.seek(0, os.SEEK_END)
        end = 0
        while pos > 0:
            step = min(1 << 16, pos)
            pos -= step
            f.seek(pos)
            newline = f.read(step).rfind(b"\n")
            if newline >= 0:
                end = pos + newline + 1
                break
        if end < size:
            f.truncate(end)


def keep_jsonl(path: str | Path, keep: Callable[[dict[str, Any]], bool]) -> None:
    """Rewrite a JSON-lines file atomically with only the rows ``keep`` accepts (and no damaged line)."""
    path = Path(path)
    if path.is_file():
        rows = [row for row in iter_jsonl(path) if keep(row)]
        write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def append_line(path: str | Path, line: str) -> None:
    """Append one line, or nothing: a failed write (a full disk) is cut off again, so the file keeps
    only complete lines, and raises OSError naming the file."""
    with open(path, "ab", buffering=0) as f:  # unbuffered: nothing is left to be written on close
        size = f.seek(0, os.SEEK_END)
        data = memoryview((line + "\n").encode("utf-8"))
        try:
            while data:
                data = data[f.write(data):]  # a write may be partial; the next one then raises
        except OSError as err:
            f.truncate(size)
            raise name_path(err, path)


class JsonlAppender:
    """Appends groups of JSON lines to a file. Each group is written at once and flushed, so a killed
    process loses nothing it wrote; with fsync_every > 0 the file is also forced to disk after a group
    when the last fsync is that many seconds old, and on close (a power cut loses at most that much work,
    and the reader drops a torn last line). fsync_every = 0 fsyncs every group, None never."""

    def __init__(self, path: str | Path, fsync_every: float | None = 0.0):
        self._path, self._file, self._every, self._last = Path(path), open(path, "ab"), fsync_every, time.monotonic()

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
        if data:
            try:
                self._file.write(data)
                self._file.flush()
            except OSError as err:  # a full disk: the reader drops the cut-off line on the next run
                raise name_path(err, self._path)
            if self._every is not None and time.monotonic() - self._last >= self._every:
                self._sync()

    def _sync(self) -> None:
        os.fsync(self._file.fileno())
        self._last = time.monotonic()

    def close(self) -> None:
        try:
            try:
                if self._every is not None:
                    self._sync()
            finally:
                self._file.close()
        except OSError as err:
            raise name_path(err, self._path)
