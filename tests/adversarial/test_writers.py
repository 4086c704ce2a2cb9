"""Every writer against hostile destinations (a file in the way, read-only and full filesystems) and kills.

Each case ends in one `error:` line and exit 2 with the destination's folder exactly as it was, or in a
correct output. Full and read-only filesystems are small tmpfs mounts (root only; skipped otherwise).
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import run
from edgelin.atomic import atomic_dir, atomic_file, scratch_dir, sweep_stale, write_atomic
from edgelin.errors import EdgelinError

QUICK = {"calibrate": ["--tokens", "64", "--streams", "1"], "validate": ["--horizon", "64", "--streams", "1"],
         "quantize": ["--int8", "--tokens", "64", "--streams", "1", "--no-validate"]}


def writers(pkg: Path, dest: Path, tmp: Path) -> dict[str, list]:
    """Command lines that write `dest` (a file or a folder), by name; `tmp` takes their other outputs."""
    return {
        "export": (["export", "gla-tiny", "-o", dest], "folder"),
        "quantize": (["quantize", pkg, "-o", dest, *QUICK["quantize"]], "folder"),
        "calibrate": (["calibrate", pkg, "-o", dest, *QUICK["calibrate"]], "file"),
        "validate-json": (["validate", "--reference", pkg, "--candidate", pkg, "--json", dest, "-o", tmp / "r",
                           *QUICK["validate"]], "file"),
        "validate-report": (["validate", "--reference", pkg, "--candidate", pkg, "-o", dest, *QUICK["validate"]], "folder"),
        "state-out": (["generate", pkg, "--prompt", "hi", "--max-new-tokens", "2", "--state-out", dest], "file"),
        "bench-json": (["bench", pkg, "--decode-tokens", "2", "--no-baseline", "--json", dest], "file"),
        "train": (["train", "--config", "gla-tiny", "--text", Path(__file__), "-o", dest, "--steps", "1"], "folder"),
    }


WRITERS = ["export", "quantize", "calibrate", "validate-json", "validate-report", "state-out", "bench-json", "train"]
# Cases that fail only when the bytes are written run the whole job first: keep them to the quick writers.
FULL_DISK = ["export", "quantize", "calibrate", "validate-json", "validate-report", "state-out"]


def assert_user_error(result, *fragments):
    """Exit 2 and one `error:` line on stderr holding every fragment (stdout may show progress)."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def ours(folder: Path) -> set[str]:
    """edgelin's entries in a temp dir (other libraries keep files there too)."""
    return {name for name in listing(folder) if "edgelin" in name}


def mount_tmpfs(where: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")


@pytest.fixture
def readonly_dir(tmp_path):
    where = tmp_path / "ro"
    mount_tmpfs(where, "1m")
    try:
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


@pytest.fixture
def full_dir(tmp_path):
    """A tmpfs with a sub-folder `sub` and no byte left."""
    where = tmp_path / "full"
    mount_tmpfs(where, "256k")
    try:
        (where / "sub").mkdir()
        fd = os.open(where / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        os.close(fd)
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


@pytest.mark.parametrize("name", WRITERS)
def test_parent_is_a_file(name, pkg, tmp_path):
    (tmp_path / "f").write_text("x")
    before = listing(tmp_path)
    args, _ = writers(pkg, tmp_path / "f" / "out", tmp_path)[name]
    assert_user_error(run(*args), "is not a directory")
    assert listing(tmp_path) == before


@pytest.mark.parametrize("name", WRITERS)
def test_wrong_kind_in_the_way(name, pkg, tmp_path):
    args, kind = writers(pkg, tmp_path / "dest", tmp_path)[name]
    if kind == "file":
        (tmp_path / "dest").mkdir()
    else:
        (tmp_path / "dest").write_text("not a package")
    before = listing(tmp_path)
    force = ["--force"] if name in ("export", "quantize", "calibrate", "train") else []
    assert_user_error(run(*args, *force), str(tmp_path / "dest"))
    assert listing(tmp_path) == before


@pytest.mark.parametrize("name", WRITERS)
def test_read_only_filesystem(name, pkg, tmp_path, readonly_dir):
    args, _ = writers(pkg, readonly_dir / "sub" / "out", tmp_path)[name]
    assert_user_error(run(*args), "not writable")
    assert listing(readonly_dir) == set()


@pytest.mark.parametrize("name", FULL_DISK)
def test_full_filesystem(name, pkg, tmp_path, full_dir):
    before = listing(full_dir)
    args, _ = writers(pkg, full_dir / "sub" / "out", tmp_path)[name]
    assert_user_error(run(*args), "No space left on device")
    assert listing(full_dir) == before


@pytest.mark.parametrize("name", ["export", "calibrate", "quantize"])
def test_existing_output_needs_force(name, pkg, tmp_path):
    args, kind = writers(pkg, tmp_path / "dest", tmp_path)[name]
    assert run(*args).exit_code == 0
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "dest").parent.rglob("*")}
    assert_user_error(run(*args), "exists; pass --force")
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "dest").parent.rglob("*")} == before


@pytest.mark.parametrize("name", ["calibrate", "validate-json", "validate-report", "state-out"])
def test_missing_parent_folders_are_made(name, pkg, tmp_path):
    dest = tmp_path / "a" / "b" / "out"
    args, kind = writers(pkg, dest, tmp_path)[name]
    r = run(*args)
    assert r.exit_code == 0, r.output
    assert dest.is_dir() if kind == "folder" else dest.is_file()
    assert [p.name for p in dest.parent.iterdir()] == ["out"]


# The writers themselves.


def test_atomic_file_leaves_nothing_when_the_body_fails(tmp_path):
    (tmp_path / "t.json").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(tmp_path / "t.json", force=True) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert listing(tmp_path) == {"t.json"} and (tmp_path / "t.json").read_text() == "old"


def test_atomic_dir_keeps_the_old_folder_when_the_body_fails(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(tmp_path / "pkg", force=True) as tmp:
            (tmp / "a").write_text("new")
            raise KeyboardInterrupt
    assert listing(tmp_path) == {"pkg", "pkg/a"} and (tmp_path / "pkg" / "a").read_text() == "old"


def test_atomic_dir_replaces_the_old_folder_whole(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "stale").write_text("old")
    with atomic_dir(tmp_path / "pkg", force=True) as tmp:
        (tmp / "a").write_text("new")
    assert listing(tmp_path) == {"pkg", "pkg/a"}


def test_made_parents_are_removed_on_failure(tmp_path):
    with pytest.raises(ValueError):
        with atomic_file(tmp_path / "x" / "y" / "z.json"):
            raise ValueError
    assert listing(tmp_path) == set()


def test_without_force_an_existing_output_is_refused(tmp_path):
    write_atomic(tmp_path / "a.txt", "1")
    with pytest.raises(EdgelinError, match="exists; pass --force"):
        write_atomic(tmp_path / "a.txt", "2")
    assert write_atomic(tmp_path / "a.txt", "2", force=True).read_text() == "2"


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_sweep_removes_only_dead_writers_leftovers(tmp_path):
    dead, alive = dead_pid(), os.getppid()
    stale = [tmp_path / f".pkg.edgelin-tmp-{dead}-abc", tmp_path / f"edgelin-export-{dead}-xyz"]
    kept = [tmp_path / f".pkg.edgelin-tmp-{alive}-abc", tmp_path / f"edgelin-export-{alive}-x", tmp_path / "pkg",
            tmp_path / f".pkg.tmp-{dead}", tmp_path / "edgelin-export-notapid-x"]
    for p in stale + kept:
        p.mkdir()
    (tmp_path / f".t.json.edgelin-tmp-{dead}-q").write_text("half")
    assert sorted(sweep_stale(tmp_path)) == sorted(stale + [tmp_path / f".t.json.edgelin-tmp-{dead}-q"])
    assert sorted(tmp_path.iterdir()) == sorted(kept)


def test_scratch_dir_is_removed_and_named_for_its_writer(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    with scratch_dir("export") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(f"edgelin-export-{os.getpid()}-")
        (tmp / "x").write_text("1")
    assert listing(tmp_path) == set()


def test_scratch_dir_in_a_missing_temp_dir_is_one_error(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "gone"))
    with pytest.raises(EdgelinError, match="cannot make a working folder"):
        with scratch_dir("export"):
            pass


# Signals during an export (a real process, its own TMPDIR).

EDGELIN = [sys.executable, "-c", "from edgelin.cli import main; main()"]


def start_export(tmp_path: Path, out: Path) -> tuple[subprocess.Popen, Path]:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    proc = subprocess.Popen([*EDGELIN, "export", "gla-tiny", "--int8", "-o", str(out)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    deadline = time.monotonic() + 120
    while not any(p.name.startswith("edgelin-") for p in tmpdir.iterdir()):  # wait until it is mid-way
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(1.0)
    return proc, tmpdir


def test_sigint_during_export_leaves_nothing(tmp_path):
    out = tmp_path / "out" / "pkg"
    proc, tmpdir = start_export(tmp_path, out)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "error: interrupted", err
    assert "Traceback" not in err
    assert not out.exists() and ours(tmpdir) == set()
    assert not (tmp_path / "out").exists() or listing(tmp_path / "out") == set()


def test_leftovers_of_a_killed_export_are_swept_by_the_next(tmp_path):
    out = tmp_path / "pkg"
    proc, tmpdir = start_export(tmp_path, out)
    proc.kill()
    proc.wait(timeout=30)
    left = [p for p in tmpdir.iterdir() if p.name.startswith("edgelin-")]
    assert left and not out.exists()
    r = subprocess.run([*EDGELIN, "export", "gla-tiny", "-o",
                        str(tmp_path / "next")], env={**os.environ, "TMPDIR": str(tmpdir)}, capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[2], timeout=300)
    assert r.returncode == 0, r.stderr
    assert ours(tmpdir) == set()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["next", "tmp"]


def test_state_file_round_trips_through_the_atomic_writer(pkg, tmp_path):
    from edgelin.runtime import Session, load_state, save_state

    s = Session(pkg, threads=1)
    _, state = s.forward(np.array([[1, 2, 3]], np.int64), s.new_state())
    save_state(tmp_path / "s.npz", state, s.manifest)
    back = load_state(tmp_path / "s.npz", s.manifest)
    assert all(np.array_equal(back[k], v) for k, v in state.items())
    assert listing(tmp_path) == {"s.npz"}


def test_ctrl_c_inside_an_import_is_an_interruption():
    """A C extension's import turns KeyboardInterrupt into ImportError; that is still Ctrl-C, not a traceback."""
    import typer

    from edgelin.cli import one_line_errors

    with pytest.raises(typer.Exit) as e:
        with one_line_errors():
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt as interrupt:
                raise ImportError("initialization failed") from interrupt
    assert e.value.exit_code == 130
    with pytest.raises(ImportError):
        with one_line_errors():
            raise ImportError("a real import failure")
