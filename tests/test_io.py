"""cratelab.io: atomic files, JSON lines that survive a crash, sha256, CSV, and the "PATH: reason" rule."""

import errno
import hashlib
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from cratelab.errors import CratelabError
from cratelab.io import (LOCK_FILE, append_line, building_folder, cut_unfinished_line, describe_os_error, folder_lock,
                         read_json, read_jsonl, remove_tree, sha256_file, write_csv, write_json, write_text)


def test_read_jsonl_drops_only_a_cut_off_last_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3')
    assert read_jsonl(path, repair=True) == [{"a": 1}, {"a": 2}]
    assert path.read_text() == '{"a": 1}\n{"a": 2}\n'
    path.write_text('{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(CratelabError, match="line 2"):
        read_jsonl(path)
    path.write_text('{"a": 1}\n' + "x" * 100_000)  # a cut-off line longer than one read of the tail
    cut_unfinished_line(path)
    assert path.read_text() == '{"a": 1}\n'
    path.write_text("no newline at all")
    cut_unfinished_line(path)
    assert path.read_text() == ""


def test_a_failed_write_names_the_callers_path_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.json"
    write_json(path, {"v": 1})
    with pytest.raises(TypeError):  # not JSON: nothing is written
        write_json(path, {"v": object()})
    assert read_json(path) == {"v": 1} and [p.name for p in tmp_path.iterdir()] == ["a.json"]
    with pytest.raises(OSError) as err:
        write_text(tmp_path / "missing" / "b.txt", "x")
    assert describe_os_error(err.value) == f"{tmp_path / 'missing' / 'b.txt'}: No such file or directory"
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(CratelabError, match="bad.json: not a valid JSON file"):
        read_json(tmp_path / "bad.json")


def test_an_error_without_a_path_names_the_output_folder():
    assert describe_os_error(OSError(28, "No space left on device"), "runs/x") == "runs/x: No space left on device"
    assert describe_os_error(FileExistsError(17, "File exists", "runs/x")) == "runs/x: exists and is not a folder"


def test_csv_sha256_and_appended_lines(tmp_path):
    write_csv(tmp_path / "t.csv", ["a", "b"], [{"a": 1, "b": None, "c": 3}, {"b": "x"}])
    assert (tmp_path / "t.csv").read_text() == "a,b\n1,\n,x\n"
    assert sha256_file(tmp_path / "t.csv") == hashlib.sha256(b"a,b\n1,\n,x\n").hexdigest()
    append_line(tmp_path / "m.jsonl", '{"step": 1}')
    append_line(tmp_path / "m.jsonl", '{"step": 2}')
    assert read_jsonl(tmp_path / "m.jsonl") == [{"step": 1}, {"step": 2}]


# ---------------------------------------------------------------- folder locks (issue 14)

HOLD = ("import sys, time; from cratelab.io import folder_lock\n"
        "with folder_lock(sys.argv[1], shared=sys.argv[2] == 'shared'):\n    print('held', flush=True); time.sleep(600)")


def _holder(folder, mode="exclusive"):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), mode], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "held\n"
    return proc


def test_a_locked_folder_names_its_holder_and_a_kill_9_frees_it(tmp_path):
    holder = _holder(tmp_path / "run")
    try:
        with pytest.raises(CratelabError, match=rf"run is in use by another cratelab process \(PID {holder.pid}\)"):
            with folder_lock(tmp_path / "run"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / "run" / LOCK_FILE).is_file()  # the stale lock file stays, and does not block
    with folder_lock(tmp_path / "run"):
        assert (tmp_path / "run" / LOCK_FILE).read_text() == f"{os.getpid()}\n"


def test_shared_holders_exclude_an_exclusive_one(tmp_path):
    holder = _holder(tmp_path / "sweep", "shared")
    try:
        with folder_lock(tmp_path / "sweep", shared=True):  # another scheduled `ablate --only`
            pass
        with pytest.raises(CratelabError, match="in use by another cratelab process"):
            with folder_lock(tmp_path / "sweep"):
                pass
    finally:
        holder.kill()
        holder.wait()


# ---------------------------------------------------------------- deleting folders (issue 27)

def _outside(tmp_path):
    """A folder outside the one being cleared, that a link points to: it must survive every delete."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("kept")
    return outside


@pytest.mark.parametrize("case", ["link to a folder", "folder holding a link", "link to a file", "dangling link",
                                  "folder", "file", "missing"])
def test_remove_tree_removes_links_never_what_they_point_to(tmp_path, case):
    outside, target = _outside(tmp_path), tmp_path / "sweep" / "runs"
    target.parent.mkdir()
    if case == "link to a folder":
        target.symlink_to(outside, target_is_directory=True)
    elif case == "folder holding a link":
        (target / "a-s0").mkdir(parents=True)
        (target / "a-s0" / "data").symlink_to(outside, target_is_directory=True)
        (target / "a-s0" / "file").symlink_to(outside / "precious.txt")
    elif case == "link to a file":
        target.symlink_to(outside / "precious.txt")
    elif case == "dangling link":
        target.symlink_to(tmp_path / "nothing")
    elif case == "folder":
        (target / "a-s0").mkdir(parents=True)
        (target / "a-s0" / "ckpt.pt").write_bytes(b"x")
    elif case == "file":
        target.write_text("x")
    remove_tree(target)
    assert not target.exists() and not target.is_symlink() and os.listdir(target.parent) == []
    assert (outside / "precious.txt").read_text() == "kept" and os.listdir(outside) == ["precious.txt"]


def test_a_failed_delete_raises_naming_the_full_path_of_what_stayed(tmp_path, monkeypatch):
    """rmtree's own error names the entry relative to its folder ('mnt': a mount point, EBUSY), and
    ignore_errors used to hide it."""
    (tmp_path / "runs" / "a-s0" / "mnt").mkdir(parents=True)
    real_rmdir = os.rmdir

    def rmdir(path, *, dir_fd=None):
        if os.path.basename(path) == "mnt":  # as the kernel says it for a mount point
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), path)
        return real_rmdir(path, dir_fd=dir_fd)

    monkeypatch.setattr(os, "rmdir", rmdir)
    with pytest.raises(OSError) as err:
        remove_tree(tmp_path / "runs")
    assert describe_os_error(err.value) == f"{tmp_path / 'runs' / 'a-s0' / 'mnt'}: Device or resource busy"


# ---------------------------------------------------------------- errors name the destination, never a temporary

def _write_onto_a_folder(tmp_path):
    (tmp_path / "eval.json").mkdir()  # a folder where the file should go: the rename onto it fails
    write_json(tmp_path / "eval.json", {"step": 1})


def _build_a_folder_with_a_file_that_cannot_be_created(tmp_path):
    with building_folder(tmp_path / "layer0") as tmp:
        (tmp / "records").write_bytes(b"x")  # a file where the next write expects a folder
        (tmp / "records" / "tokens.bin").write_bytes(b"x")


def _save_safetensors_onto_a_folder(tmp_path):
    from safetensors.numpy import save_file

    with building_folder(tmp_path / "state") as tmp:  # as SAELens saves an SAE's state
        (tmp / "sae_weights.safetensors").mkdir()
        save_file({"w": np.zeros(2, dtype=np.float32)}, tmp / "sae_weights.safetensors")  # a SafetensorError


@pytest.mark.parametrize("write, path, reason", [
    (_write_onto_a_folder, "eval.json", "Is a directory"),
    (_build_a_folder_with_a_file_that_cannot_be_created, "layer0/records/tokens.bin", "Not a directory"),
    (_save_safetensors_onto_a_folder, "state", "Is a directory"),  # the library names no file: the folder
])
def test_a_failed_write_names_the_destination_never_a_temporary(tmp_path, write, path, reason):
    with pytest.raises(OSError) as err:
        write(tmp_path)
    assert describe_os_error(err.value) == f"{tmp_path / path}: {reason}"
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # and no temporary is left


def test_our_own_errors_inside_a_building_folder_stay_ours(tmp_path):
    """Only a library's exception is read for an OS error: ours already say what is wrong."""
    with pytest.raises(CratelabError, match=r"^x: damaged, says a library: No space left \(os error 28\)$"):
        with building_folder(tmp_path / "layer0"):
            raise CratelabError("x: damaged, says a library: No space left (os error 28)")
    assert list(tmp_path.iterdir()) == []
