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


def test_paper_tables_points_unchanged():
    """Every grid point of the papers' tables (both profiles: row, seed, config, parameters, metric) as before the specs
    moved into per-paper notebooks, written with `grid` and `mc`: finished points are reused by their config hash, so a
    changed point is a re-run. Update the digest only for a deliberate change of a table."""
    from wsss_nb.paper_tables import TABLES, table_points
    pts = [[t, prof, p["row"], p["seed"], p["config"], p["params"], p["metric"]] for t, s in TABLES.items()
           for prof in ("quick", "full") for p in table_points(s, prof, runs_root="/r", data_root="/d")]
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
    from wsss_nb.paper_tables import TABLES, table_points
    from wsss_nb.train import run_config
    from wsss_nb.bana import bana_config, stage1_config, stage3_config
    keys = []
    for t, s in TABLES.items():
        for prof in ("quick", "full"):
            for p in table_points(s, prof, runs_root="/r", data_root="/d"):
                if s.kind == "bana":
                    b = bana_config(**p["config"])
                    keys.append([t, prof, p["row"], p["seed"], stage1_config(b).key, stage3_config(b).key])
                else: keys.append([t, prof, p["row"], p["seed"], run_config(**p["config"]).key])
    digest = hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()
    assert digest == "931c885ebcff704049c5e55fd5511adedf50bf33bd9b04a7ae1b1a73577c96ff"
