"""The installed `wsss-nb` console script, run as a user would."""
import shutil, subprocess, sys
from pathlib import Path

import pytest

EXE = shutil.which("wsss-nb") or str(Path(sys.executable).parent / "wsss-nb")


def run(*args):
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=300)


def test_make_data_builds_prints_stats_and_is_idempotent(tmp_path):
    root = tmp_path / "bench"
    args = ("make-data", "--root", str(root), "--n-train", "6", "--n-val", "2", "--size", "48")
    r = run(*args)
    assert r.returncode == 0, r.stderr
    assert (root / "ImageSets/Segmentation/train.txt").exists() and "benchmark at" in r.stdout
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    r2 = run(*args)
    assert r2.returncode == 0, r2.stderr
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("args,needle", [
    (("make-data", "--n-train", "abc"), "invalid int value"),
    (("make-data", "--knob", "no_such_knob=1", "--n-train", "2", "--n-val", "1", "--size", "48"), "no_such_knob"),
    (("frobnicate",), "invalid choice"),
])
def test_bad_arguments_give_one_line_error(tmp_path, args, needle):
    r = run(*args, *(["--root", str(tmp_path / "x")] if args[0] == "make-data" else []))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and needle in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_help():
    r = run("make-data", "--help")
    assert r.returncode == 0 and "--root" in r.stdout
