"""The installed `wsss-nb` console script, run as a user would."""
import json, shutil, subprocess, sys
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


# ---- issue 14: no traceback for a user error, never exit 0 after a failure, nothing a user wrote overwritten ----

TINY = ["method=full", "crop=48", "batch_size=2", "epochs=1", "device=cpu", "progress=false",
        "max_train_images=4", "method_cfg.aspp_channels=8", "method_cfg.decoder_channels=8"]


def sets(*kv):
    return [a for s in kv for a in ("--set", s)]


def run_in(cwd, *args):
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def one_line_error(r, needle, code=2):
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    "A tiny benchmark and a one-epoch run trained with a *relative* data_root from the benchmark's parent folder."
    home = tmp_path_factory.mktemp("cli")
    assert (
        run_in(home, "make-data", "--root", "bench", "--n-train", "4", "--n-val", "2", "--size", "48").returncode == 0
    )
    r = run_in(home, "train", *sets(*TINY, "data_root=bench", "out_dir=runs"))
    assert r.returncode == 0, r.stderr
    (run,) = (home / "runs").iterdir()
    return home, run, r.stdout.split("mIoU ")[1].split()[0]


def test_eval_from_another_directory_scores_the_same_data(trained, tmp_path):
    home, run, miou = trained
    r = run_in(tmp_path, "eval", "--run", str(run))              # the run's data_root was stored absolute
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"val: mIoU {miou}")


@pytest.mark.parametrize("extra,needle", [
    (("--max-images", "0"), "max_images=0: expected a positive integer"),
    (("--bg-power", "nan"), "bg_power=nan"),
    (("--bg-power", "-1"), "bg_power=-1.0: expected a positive number"),
    (("--min-confidence", "5"), "min_confidence=5.0: expected a number in [0, 1]"),
    (("--scales", "nan"), "scales=nan"),
])
def test_eval_rejects_bad_inference_options(trained, extra, needle):
    one_line_error(run("eval", "--run", str(trained[1]), *extra), needle)


def test_eval_and_infer_take_a_protocol_whose_fields_explicit_flags_override(trained, tmp_path):
    """Issue 16: `--protocol NAME` starts from a paper's evaluation protocol; a flag given on the command line overrides
    that field, a flag not given leaves the protocol's value."""
    home, run_dir, miou = trained
    plain = run("eval", "--run", str(run_dir))
    shape = run("eval", "--run", str(run_dir), "--protocol", "shape")      # single scale, bIoU at 5 % of the diagonal
    assert shape.returncode == 0, shape.stderr
    assert shape.stdout.startswith(f"val: mIoU {miou}") and "protocol: shape" in shape.stdout
    biou = lambda r: r.stdout.split("bIoU ")[1].split()[0]
    assert biou(shape) != biou(plain), (shape.stdout, plain.stdout)
    one_line_error(run("eval", "--run", str(run_dir), "--protocol", "ssss"), "FullySupervised has no classifier")
    undone = run("eval", "--run", str(run_dir), "--protocol", "ssss", "--min-confidence", "none", "--no-flip",
                 "--scales", "1", "--bg-power", "none")                    # every setting of the preset switched off
    assert undone.returncode == 0, undone.stderr
    assert undone.stdout.startswith(f"val: mIoU {miou}")
    out = tmp_path / "pred"
    r = run("infer", "--run", str(run_dir), "--protocol", "bana", "--crf-param", "iters=3", "--export", str(out))
    assert r.returncode == 0, r.stderr
    infer = json.loads((out / "metrics.json").read_text())["infer"]
    assert (infer["scales"], infer["flip"], infer["average"]) == ([1.0, 0.5, 0.75, 1.5], True, "logits")
    assert infer["crf"] and infer["crf_params"] == dict(iters=3, bi_compat=4, bi_sxy=121, bi_srgb=5, gauss_compat=3,
                                                        gauss_sxy=3)
    one_line_error(run("eval", "--run", str(run_dir), "--protocol", "voc"), "protocol='voc': expected one of")


def test_infer_never_writes_into_a_dataset_or_over_a_folder(trained, tmp_path):
    home, run_dir, _ = trained
    gt = home / "bench/SegmentationClass"
    before = {p.name: p.read_bytes() for p in gt.iterdir()}
    for force in ((), ("--force",)):
        one_line_error(run("infer", "--run", str(run_dir), "--export", str(gt), *force), "inside the dataset root")
    assert {p.name: p.read_bytes() for p in gt.iterdir()} == before
    out = tmp_path / "pred"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    one_line_error(run("infer", "--run", str(run_dir), "--export", str(out)), "folder is not empty")
    r = run("infer", "--run", str(run_dir), "--export", str(out), "--force")
    assert r.returncode == 0, r.stderr
    assert (out / "mine.txt").read_text() == "keep" and len(list(out.glob("*.png"))) == 2


def test_eval_on_a_damaged_run_names_the_file(trained, tmp_path):
    bad = tmp_path / "run"
    shutil.copytree(trained[1], bad)
    (bad / "config.json").write_text("[1, 2]")
    one_line_error(run("eval", "--run", str(bad)), "config.json: expected a json object of RunConfig fields")


@pytest.mark.parametrize("kv,needle", [
    ("poly_power=NaN", "poly_power=nan: expected a finite number"),
    ("lr=NaN", "lr=nan: expected a finite number"),
    ("grad_clip=-1", "grad_clip=-1.0: expected a positive number"),
    ("momentum=-1", "momentum=-1.0"),
    ("num_workers=-1", "num_workers=-1"),
    ("scale_range=[0.5]", "scale_range=[0.5]: expected two numbers"),
])
def test_train_rejects_bad_numbers(trained, kv, needle):
    one_line_error(run("train", *sets(*TINY, f"data_root={trained[0] / 'bench'}", kv)), needle)


@pytest.mark.parametrize(
    "body,needle", [("[1]", "got list"), ('"cam"', "got str"), ("3", "got int"), ("{", "not a readable json")]
)
def test_train_config_file_must_be_an_object(tmp_path, body, needle):
    (tmp_path / "c.json").write_text(body)
    one_line_error(run("train", "--config", str(tmp_path / "c.json")), needle)


def test_failed_run_leaves_no_orphan_folder(tmp_path):
    r = run("train", *sets(*TINY, f"data_root={tmp_path / 'nowhere'}", f"out_dir={tmp_path / 'runs'}"))
    one_line_error(r, "dataset root not found")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_bench_rejects_zero_repeats():
    one_line_error(run("bench", "pamr", "--repeats", "0"), "repeats=0: expected a positive integer")


def test_bench_train_writes_its_result_as_json(tmp_path):
    root = tmp_path / "bench"
    assert run("make-data", "--root", str(root), "--n-train", "8", "--n-val", "2", "--size", "48").returncode == 0
    out = tmp_path / "train.json"
    r = run("bench", "train", "--methods", "cam", "--steps", "1", "--warmup", "0", "--batch", "4", "--crop", "32",
            "--data-root", str(root), "--json", str(out))
    assert r.returncode == 0, r.stderr
    j = json.loads(out.read_text())
    cam = j["methods"]["cam"]
    assert list(j["methods"]) == ["cam"] and cam["step_ms"] > 0 and cam["predict_ms"] > 0 and cam["peak_mib"] >= 0
    assert cam["step_x_cam"] == 1 and j["data_loading"]["loader_ms"] > 0 and "| cam |" in r.stdout
    one_line_error(run("bench", "train", "--data-root", str(tmp_path / "none")), "wsss-nb make-data")


def test_make_data_keeps_a_folder_with_an_unreadable_description(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "benchmark.json").write_text("{not json")
    (root / "notes.txt").write_text("mine")
    r = run("make-data", "--root", str(root), "--n-train", "2", "--n-val", "1", "--size", "48")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "benchmark.json" in r.stderr, r.stderr
    assert (root / "notes.txt").read_text() == "mine" and (root / "benchmark.json").read_text() == "{not json"


def test_tables_exit_nonzero_when_a_point_fails(tmp_path):
    "A table whose points fail exits 1 (run_table keeps finished values: tests/test_tables.py)."
    out = tmp_path / "tables"
    (out / "results").mkdir(parents=True)
    r = run(
        "tables",
        "ssss_t9",
        "--data-root",
        str(tmp_path / "nonexistent"),
        "--runs",
        str(tmp_path / "rt"),
        "--out",
        str(out),
    )
    assert r.returncode == 1 and "failed" in r.stderr and "Traceback" not in r.stderr, (r.stdout, r.stderr)


def test_tables_render_only_runs_nothing(tmp_path):
    "issue 20: --render-only writes a profile's tables from stored points alone; none stored: rows 'not run', exit 0."
    out = tmp_path / "tables"
    r = run("tables", "ssss_t7", "--profile", "evidence", "--render-only", "--runs", str(tmp_path / "rt"),
            "--out", str(out))
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "9 points not run yet" in r.stdout and not (tmp_path / "rt").exists()      # 3 claim rows × 3 seeds
    assert "| not run |" in (out / "evidence" / "ssss_t7.md").read_text()
    assert json.loads((out / "claims.json").read_text())[0]["verdict"] == "n/a"
    r = run("tables", "ssss_t7", "--render-only", "--out", str(out))                 # quick always runs
    assert r.returncode == 2 and "render_only=True" in r.stderr and "Traceback" not in r.stderr


def test_out_of_memory_is_one_line(trained, tmp_path):
    "A crop far beyond memory (12 TB for one batch) is reported as such, not as torch's traceback."
    r = run("train", *sets(*TINY, f"data_root={trained[0] / 'bench'}", "crop=1000000", f"out_dir={tmp_path}"))
    one_line_error(r, "out of memory")
    assert not any(tmp_path.iterdir())


def test_train_with_the_release_recipe(trained, tmp_path):
    "issue 16: `--set recipe=official` trains with the method's release recipe; a method without one is a clear error."
    home, _, _ = trained
    small = ["crop=48", "batch_size=2", "epochs=1", "device=cpu", "progress=false", "max_train_images=4",
             "max_val_images=2", f"data_root={home / 'bench'}", f"out_dir={tmp_path}"]
    r = run("train", *sets("method=cam", "recipe=official", *small))
    assert r.returncode == 0, r.stderr
    (rd,) = tmp_path.iterdir()
    c = json.loads((rd / "config.json").read_text())
    assert (c["recipe"], c["optimizer"], c["lr"], c["lr_backbone"], c["weight_decay"], c["schedule"]) == (
        "official", "sgd", 0.01, 0.001, 0.0005, "constant")
    assert (c["bias_lr_mult"], c["bias_decay"], c["freeze_bn"], c["method_cfg"]) == (
        2.0, False, True, {"bg_score": 0.1, "label_threshold": 0.5, "dropout": 0.5, "min_pool": 0.0})
    one_line_error(run("train", *sets("method=full", "recipe=official", *small)), "has no release recipe")
