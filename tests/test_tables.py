"""A tiny table runs through papermill: a failing point is recorded, the other completes, a re-run reuses the
finished one; a corrupt results.json is recomputed; a re-run whose points fail leaves a table holding their finished
values as it was; the papers' tables expand to the same grid points (config, parameters, metric) as before they moved
to per-paper notebooks."""

import hashlib, json
from pathlib import Path

import pytest

from wsss_nb.synthetic import make_benchmark
from wsss_nb.tables import Claim, Row, TableSpec
from wsss_nb.table_runs import run_point, run_table, write_index


def test_tiny_table_through_papermill(tmp_path):
    bench = make_benchmark(tmp_path / "bench", n_train=8, n_val=4, size=48, seed=1, progress=False)
    spec = TableSpec(
        id="tiny_test", paper="ssss", paper_table="Table 0", caption="smoke test", protocol="ssss",
        base=dict(method="cam", epochs=1, crop=32, batch_size=4, device="cpu", data_root=str(bench)),
        rows=[Row("ok", {}, paper=50.0), Row("broken", {"data_root": str(tmp_path / "missing")}, paper=40.0)],
        claims=[Claim("ok beats broken", "ok", "broken")])
    kw = dict(runs_root=tmp_path / "runs", out_dir=tmp_path / "tables", progress=False)
    first = run_table(spec, "quick", **kw)
    status = {p["row"]: p["status"] for p in first["points"]}
    assert status == {"ok": "done", "broken": "failed"}, first["points"]
    assert (first["failed"], first["written"], first["kept"]) == (1, True, [])   # first write: nothing to lose
    broken = next(p for p in first["points"] if p["row"] == "broken")
    assert "missing" in broken["error"], broken["error"]          # the error names the missing folder
    ok = next(p for p in first["points"] if p["row"] == "ok")
    assert 0.0 <= ok["value"] <= 1.0
    res = Path(ok["path"]) / "results.json"
    executed = Path(ok["path"]) / "train_eval.ipynb"
    assert res.is_file() and executed.is_file()                    # the executed notebook is kept with the run
    got = json.loads(res.read_text())                              # final numbers: the table's protocol (issue 16)
    assert got["protocol"] == "ssss" and got["val"]["mIoU"] == pytest.approx(ok["value"])
    assert set(got["val_trainer"]) >= {"mIoU", "F"}                # the trainer's single-scale validation beside
    stamp = res.stat().st_mtime_ns

    md = (tmp_path / "tables" / "tiny_test.md").read_text()
    assert "| ok |" in md and "50.0" in md and "failed" in md
    assert "Protocol: `ssss`: scales 1, 0.5, 1.5, 2 with flips" in md
    csv = (tmp_path / "tables" / "results" / "tiny_test.csv").read_text()
    assert "broken" in csv and "failed" in csv

    second = run_table(spec, "quick", **kw)
    status = {p["row"]: p["status"] for p in second["points"]}
    assert status == {"ok": "reused", "broken": "failed"}          # finished point reused, failed one tried again
    assert (second["failed"], second["written"]) == (1, True)      # 'broken' was failed before: nothing lost
    assert res.stat().st_mtime_ns == stamp
    assert second["points"][0]["value"] == ok["value"]

    index = write_index(tmp_path / "tables").read_text()
    assert "tiny_test.md" in index


def test_failed_rerun_keeps_the_written_table(tmp_path):
    """Issue 14.2: `wsss-nb tables T --data-root /nonexistent` once wrote 'failed' over T's good numbers."""
    bench = make_benchmark(tmp_path / "bench", n_train=16, n_val=8, size=64, progress=False)
    spec = TableSpec(
        id="tiny_keep", paper="hfpl", paper_table="Table 0", caption="kept on failure", protocol="hfpl",
        base=dict(method="cam", epochs=1, max_train_images=16, max_val_images=8, batch_size=8, device="cpu"),
        rows=[Row("cam", {}, paper=50.0)])
    kw = dict(runs_root=tmp_path / "runs", out_dir=tmp_path / "tables", progress=False)
    good = run_table(spec, "quick", data_root=bench, **kw)
    assert (good["failed"], good["written"], good["kept"]) == (0, True, [])
    value = good["points"][0]["value"]
    assert 0.0 <= value <= 1.0
    res = Path(good["points"][0]["path"]) / "results.json"

    # item 11: a truncated results.json (a disk full, a copy cut short) counts as missing: warned about, recomputed
    res.write_text(res.read_text()[:20])
    with pytest.warns(UserWarning, match=r"results\.json.*recomputing"):
        again = run_table(spec, "quick", data_root=bench, **kw)
    assert again["points"][0]["status"] == "done", again["points"]
    assert json.loads(res.read_text())["val"]["mIoU"] == pytest.approx(value)   # the finished run, re-evaluated
    assert again["written"]

    # item 2: a re-run whose point fails (no such data folder) leaves the written table and the index as they were
    index = write_index(tmp_path / "tables")
    files = [tmp_path / "tables" / "tiny_keep.md", tmp_path / "tables" / "results" / "tiny_keep.csv",
             tmp_path / "tables" / "results" / "tiny_keep.json", index]
    before = [f.read_bytes() for f in files]

    with pytest.warns(UserWarning, match="tiny_keep.csv"):
        bad = run_table(spec, "quick", data_root=tmp_path / "nonexistent", **kw)
    assert bad["points"][0]["status"] == "failed" and "nonexistent" in bad["points"][0]["error"]
    assert (bad["failed"], bad["written"]) == (1, False)
    assert bad["kept"] == [dict(row="cam", seed=0, value=value)]
    write_index(tmp_path / "tables")
    assert [f.read_bytes() for f in files] == before              # md, csv, json and the index: byte-identical


def test_fresh_unreadable_results_name_the_file(tmp_path):
    """A results.json the experiment notebook wrote but that is not JSON: the point fails with an error naming it."""
    import nbformat

    nb = nbformat.v4.new_notebook(
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        }
    )
    nb.cells = [nbformat.v4.new_code_cell("config = {}\nresults_path = None", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("open(results_path, 'w').write('{\"val\": {\"mIoU\": 0.')")]
    (tmp_path / "nbs").mkdir()
    nbformat.write(nb, tmp_path / "nbs" / "garbage.ipynb")
    cfg = dict(data_root=str(tmp_path / "data"), out_dir=str(tmp_path / "runs"))
    r = run_point(cfg, "garbage", notebooks=tmp_path / "nbs")
    assert r["status"] == "failed", r
    assert "results.json" in r["error"] and str(tmp_path) in r["error"], r["error"]


def test_experiment_notebooks_have_a_parameters_cell():
    """papermill injects values after the cell tagged `parameters`; nbdev_clean must keep that tag (settings.ini:
    allowed_cell_metadata_keys). The experiment notebooks are package data in wsss_nb/experiments/."""
    from wsss_nb.table_runs import EXPERIMENTS_DIR
    nbs = sorted(EXPERIMENTS_DIR.glob("*.ipynb"))
    assert {p.stem for p in nbs} >= {"train_eval", "pseudo_labels", "bana"}
    for p in nbs:
        cells = json.loads(p.read_text())["cells"]
        assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in cells), p
    for p in sorted((Path(__file__).parents[1] / "papers_tables").glob("*.ipynb")):
        cells = json.loads(p.read_text())["cells"]
        assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in cells), p


# the tables registered before issue 20 (which added ISSUE_20): the digests below are over these, so a new table leaves
# them as they were and its own points and run keys get digests of their own
ISSUE_20 = ("ssss_t8", "shape_t1", "shape_t5_train", "shape_t6_train", "hfpl_t1", "bana_acc", "bana_s3", "bana_s5")


def _tables(new: bool = False) -> dict:
    from wsss_nb.paper_tables import TABLES
    return {t: s for t, s in TABLES.items() if (t in ISSUE_20) == new}


def _points(tables: dict) -> list:
    from wsss_nb.paper_tables import table_points
    return [[t, prof, p["row"], p["seed"], p["config"], p["params"], p["metric"]] for t, s in tables.items()
            for prof in ("quick", "full") for p in table_points(s, prof, runs_root="/r", data_root="/d")]


def _run_keys(tables: dict) -> list:
    from wsss_nb.paper_tables import table_points
    from wsss_nb.train import run_config
    from wsss_nb.bana import bana_config, stage1_config, stage3_config
    keys = []
    for t, s in tables.items():
        for prof in ("quick", "full"):
            for p in table_points(s, prof, runs_root="/r", data_root="/d"):
                if s.kind == "bana":
                    b = bana_config(**p["config"])
                    keys.append([t, prof, p["row"], p["seed"], stage1_config(b).key, stage3_config(b).key])
                else: keys.append([t, prof, p["row"], p["seed"], run_config(**p["config"]).key])
    return keys


def test_paper_tables_points_unchanged():
    """Every grid point of the papers' tables (both profiles: row, seed, config, parameters, metric) as before the specs
    moved into per-paper notebooks, written with `grid` and `mc`: finished points are reused by their config hash, so a
    changed point is a re-run. Update the digest only for a deliberate change of a table."""
    TABLES = _tables()
    pts = _points(TABLES)
    assert len(pts) == 449
    digest = hashlib.sha256(json.dumps(pts, sort_keys=True).encode()).hexdigest()
    assert digest == "bca7eed36a88e93340972dbb057995bad330ae4d082039a7566a6345e8da7898"
    # issue 16's recipes: the profiles no longer spell out the calibrated AdamW setting, which is now the run config's
    # default recipe (the run keys are the same; test_project checks that): with it spelt out, the points of before
    spelt = dict(optimizer="adamw", lr=3e-3, lr_backbone=3e-3)
    pts = [[t, prof, r, seed, cfg if TABLES[t].kind == "bana" else {**spelt, **cfg}, par, m]
           for t, prof, r, seed, cfg, par, m in pts]
    digest = hashlib.sha256(json.dumps(pts, sort_keys=True).encode()).hexdigest()
    assert digest == "fdb85782481d60254e088e9e398590d28477147f25d9e20982151aba244e567a"
    # issue 16 changed two things on purpose: every point's parameters name its table's evaluation protocol, and
    # SSSS Table 9 reads an evaluation with ground-truth labels; without them the points are those of before
    before = [[t, prof, r, seed, cfg, {k: v for k, v in par.items() if k != "protocol"}, m]
              for t, prof, r, seed, cfg, par, m in pts]
    for p in before:
        if p[0] == "ssss_t9": p[5:] = [{}, "val.mIoU"]
    digest = hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()
    assert digest == "88ce52aee3aa1f745f03964c82fb808431959545dc03352068a1caf23ebca047"


def test_paper_tables_run_keys_unchanged():
    """The run keys (folders) of every table point, both profiles: a changed key is a re-run of a finished point. Keys
    as of issue 16 (the same as before `recipe` and the options added later: each new option stays out of the hash at
    its default). Update the digest only for a deliberate change of a table or of a method's default. Issue 17 changed
    one: the DeepLab heads' width (None: the backbone's head_width, 32 on tiny) — the 194 ssss/shape/full points got
    new keys (with the widths spelt out as 128 every key was the old one), the 255 cam/bana points kept theirs."""
    keys = _run_keys(_tables())
    digest = hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()
    assert digest == "931c885ebcff704049c5e55fd5511adedf50bf33bd9b04a7ae1b1a73577c96ff"


def test_issue_20_tables_points_and_run_keys():
    """The tables issue 20 added (two stages, train columns, CAM pseudo labels, BANA's supplement): their grid points
    and run keys. Most of their runs are runs of the older tables (same run configs: trained once, evaluated again), and
    every claim they make names rows that hold the paper's number. Update a digest only for a deliberate change: the
    two-stage rows of ssss_t8 and shape_t1 left the quick profile (131 → 125 points; make reproduce's 20 minutes)."""
    new = _tables(new=True)
    assert sorted(new) == sorted(ISSUE_20)
    pts, keys = _points(new), _run_keys(new)
    assert len(pts) == 125
    digest = lambda x: hashlib.sha256(json.dumps(x, sort_keys=True).encode()).hexdigest()
    assert digest(pts) == "0245ffc77bc98bcf9f1a52a9e87b64df6c79c72a3856b4e270d77c948ece16fa"
    assert digest(keys) == "a74c2343618f837899ea3a46bd8370b0f61c63505b2946a22f28a43d5112e211"
    old = {tuple(k[4:]) for k in _run_keys(_tables())}
    fresh = {k[0] for k in keys if tuple(k[4:]) not in old}        # tables with a run no older table has
    assert fresh == {"bana_s3", "bana_s5", "shape_t6_train"}         # GAP + NAL and V2, DP, quick α = 0.7
    for s in new.values():
        named = {x for c in s.claims for x in (c.better, c.worse)}
        assert all(r.paper is not None for r in s.rows if r.label in named), s.id


def test_two_stage_point_through_papermill(tmp_path):
    """`train_eval` with `two_stage`: the run's pseudo labels on its training images are exported into its folder,
    `full` trains on them (its own run, keyed by the export folder) and is scored; both stages' numbers: one point."""
    bench = make_benchmark(tmp_path / "bench", n_train=8, n_val=4, size=48, seed=1, progress=False)
    spec = TableSpec(
        id="tiny_two", paper="ssss", paper_table="Table 0", caption="two stages", protocol="single",
        base=dict(method="cam", epochs=1, crop=32, batch_size=4, device="cpu", max_train_images=6),
        params={"two_stage": {"export": {"crf": False}, "evals": {"val_gt": {"gt_labels": True}}}},
        rows=[Row("one stage", {}, paper=50.0), Row("two stages", {}, paper=55.0, metric="two_stage.val.mIoU"),
              Row("two stages, gt labels", {}, metric="two_stage.val_gt.mIoU")],
        claims=[Claim("two beat one", "two stages", "one stage")])
    kw = dict(runs_root=tmp_path / "runs", out_dir=tmp_path / "tables", data_root=bench, progress=False)
    r = run_table(spec, "quick", **kw)
    assert r["failed"] == 0 and all(0 <= p["value"] <= 1 for p in r["points"]), r["points"]
    assert len({p["path"] for p in r["points"]}) == 1                             # one point, three numbers
    res = json.loads((Path(r["points"][0]["path"]) / "results.json").read_text())
    two = res["two_stage"]
    pdir = Path(two["pseudo_dir"])
    assert pdir.parent == Path(res["run_dir"])                                     # the export lives in the run
    assert len(list(pdir.glob("*.png"))) == 6 and two["pseudo"]["split"] == "train"   # its training images only
    assert two["pseudo"]["infer"]["gt_labels"] is True and two["pseudo"]["infer"]["crf"] is False
    assert two["config"]["method"] == "full" and two["config"]["method_cfg"]["pseudo_dir"] == str(pdir)
    assert two["config"]["max_train_images"] == 6 and two["config"]["epochs"] == 1 and two["protocol"] == "single"
    assert Path(two["run_dir"]).parent == Path(res["run_dir"]).parent             # a run of its own, beside it
    assert set(two) >= {"val", "val_gt", "pseudo", "history"} and res["val"]["mIoU"] == r["points"][0]["value"]
    again = run_table(spec, "quick", **kw)
    assert {p["status"] for p in again["points"]} == {"reused"}


def test_box_accuracy_point_through_papermill(tmp_path):
    """`pseudo_labels` with `accuracy_split` and no pseudo labels (`split=None`): the stage-1 classifier's accuracy on
    the val split's ground-truth boxes (BANA supplement Sec. 2)."""
    bench = make_benchmark(tmp_path / "bench", n_train=8, n_val=4, size=64, seed=1, progress=False)
    spec = TableSpec(
        id="tiny_acc", paper="bana", paper_table="Table 0", caption="box accuracy", protocol=None,
        metric="box_accuracy.accuracy", experiment="pseudo_labels", kind="bana",
        base=dict(cls_epochs=1, cls_crop=48, cls_batch_size=4, device="cpu", max_val_images=3),
        params={"split": None, "accuracy_split": "val"},
        rows=[Row("BAP", {"cls_pooling": "bap"}, paper=82.3)])
    r = run_table(spec, "quick", runs_root=tmp_path / "runs", out_dir=tmp_path / "tables", data_root=bench,
                  progress=False)
    p = r["points"][0]
    assert p["status"] == "done" and 0 <= p["value"] <= 1, p
    res = json.loads((Path(p["path"]) / "results.json").read_text())
    assert res["split"] is None and "Ycrf" not in res                               # no pseudo labels made
    from wsss_nb.data import VOCDataset
    assert res["box_accuracy"]["boxes"] == sum(len(VOCDataset(bench, "val")[i]["boxes"]) for i in range(3))
