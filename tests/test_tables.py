"""A tiny table runs through papermill: a failing point is recorded, the other completes, a re-run reuses the finished one."""
import json
from pathlib import Path

from wsss_nb.synthetic import make_benchmark
from wsss_nb.tables import Claim, Row, TableSpec, register_table, run_table, write_index, TABLES


def test_tiny_table_through_papermill(tmp_path):
    bench = make_benchmark(tmp_path / "bench", n_train=8, n_val=4, size=48, seed=1, progress=False)
    spec = register_table(TableSpec(
        id="tiny_test", paper="ssss", paper_table="Table 0", caption="smoke test",
        base=dict(method="cam", epochs=1, crop=32, batch_size=4, device="cpu", data_root=str(bench)),
        rows=[Row("ok", {}, paper=50.0), Row("broken", {"data_root": str(tmp_path / "missing")}, paper=40.0)],
        claims=[Claim("ok beats broken", "ok", "broken")]))
    try:
        kw = dict(runs_root=tmp_path / "runs", out_dir=tmp_path / "tables", progress=False)
        first = run_table("tiny_test", "quick", **kw)
        status = {p["row"]: p["status"] for p in first["points"]}
        assert status == {"ok": "done", "broken": "failed"}, first["points"]
        broken = next(p for p in first["points"] if p["row"] == "broken")
        assert "missing" in broken["error"], broken["error"]          # the error names the missing folder
        ok = next(p for p in first["points"] if p["row"] == "ok")
        assert 0.0 <= ok["value"] <= 1.0
        res = Path(ok["path"]) / "results.json"
        executed = Path(ok["path"]) / "train_eval.ipynb"
        assert res.is_file() and executed.is_file()                    # the executed notebook is kept with the run
        stamp = res.stat().st_mtime_ns

        md = (tmp_path / "tables" / "tiny_test.md").read_text()
        assert "| ok |" in md and "50.0" in md and "failed" in md
        csv = (tmp_path / "tables" / "results" / "tiny_test.csv").read_text()
        assert "broken" in csv and "failed" in csv

        second = run_table("tiny_test", "quick", **kw)
        status = {p["row"]: p["status"] for p in second["points"]}
        assert status == {"ok": "reused", "broken": "failed"}          # finished point reused, failed one tried again
        assert res.stat().st_mtime_ns == stamp
        assert second["points"][0]["value"] == ok["value"]

        index = write_index(tmp_path / "tables").read_text()
        assert "tiny_test.md" in index
    finally:
        TABLES.pop("tiny_test", None)


def test_experiment_notebooks_have_a_parameters_cell():
    """papermill injects values after the cell tagged `parameters`; nbdev_clean must keep that tag (settings.ini)."""
    from wsss_nb.tables import EXPERIMENTS_DIR
    nbs = sorted(EXPERIMENTS_DIR.glob("*.ipynb"))
    assert {p.stem for p in nbs} >= {"train_eval", "pseudo_labels", "bana"}
    for p in nbs:
        cells = json.loads(p.read_text())["cells"]
        assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in cells), p
    for p in sorted((Path(__file__).parents[1] / "papers_tables").glob("*.ipynb")):
        cells = json.loads(p.read_text())["cells"]
        assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in cells), p
