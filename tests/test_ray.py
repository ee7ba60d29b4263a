"""Table sweeps on Ray (issue 18): a Ray head the test starts on this machine (`ray start --head`, joined by
`address="127.0.0.1:PORT"`) runs a tiny table whose values equal the local executor's, point for point; a point that
fails in its notebook, one whose run_point raises and one that asks for a GPU no node has are failed points while the
others finish; `address=None` starts a local Ray for the call, whose tasks get the CPUs and torch threads asked for,
and whose task lost with its worker is run again. No Ray process is left behind."""

import json, os, shutil, socket, subprocess, sys, tempfile, time
from pathlib import Path

import nbformat
import pytest
import ray

from wsss_nb.core import ConfigError
from wsss_nb.synthetic import make_benchmark
from wsss_nb.table_runs import run_table
from wsss_nb.tables import Row, TableSpec


def _alive(pid: int) -> bool:
    try: return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError): return False


def _descendants(pid: int) -> set[int]:
    "The live processes below `pid` (Linux /proc)."
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try: parent[int(d)] = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError): pass
    out, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - out
        out |= frontier
    return {p for p in out if _alive(p)}


def _gone(pids: set[int], seconds: float = 60) -> set[int]:
    "Those of `pids` still alive after waiting up to `seconds` for them to exit."
    deadline = time.time() + seconds
    while (left := {p for p in pids if _alive(p)}) and time.time() < deadline: time.sleep(0.5)
    return left


def _auth(mp):
    """Ray's token authentication off, in this process and the head alike: Ray reads the mode once, when this process
    first loads it, so a token set here later would not reach the driver; and a local `ray.init` would otherwise write
    ~/.ray/auth_token. (A user's `wsss-nb tables --address` is a fresh process: `RAY_AUTH_MODE=token` works there.)"""
    auth = dict(RAY_AUTH_MODE="disabled")
    for k, v in auth.items(): mp.setenv(k, v)
    mp.delenv("RAY_AUTH_TOKEN", raising=False)
    return auth


@pytest.fixture(scope="module")
def cluster():
    "A Ray head with 2 CPUs and no GPU started for these tests (`ray start --head --block`), stopped after."
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))      # short: Ray's unix sockets live under it
    mp = pytest.MonkeyPatch()
    auth = _auth(mp)                                              # the head and this process (the driver) share it
    ray_cli = Path(sys.executable).with_name("ray")
    cmd = [str(ray_cli if ray_cli.exists() else shutil.which("ray")), "start", "--head", "--block", f"--port={port}",
           "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"]
    log = open(temp/"head.log", "w")
    head = subprocess.Popen(cmd, env={**os.environ, **auth}, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        while not (temp/"ray_current_cluster").exists():         # written once the head is up
            assert head.poll() is None and time.time() < deadline, (temp/"head.log").read_text()
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        procs = _descendants(head.pid)                            # gcs, raylet, agents, idle workers
        head.terminate()                                          # `ray start --block` stops what it started on SIGTERM
        head.wait(timeout=120)
        left = _gone(procs)
        mp.undo()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)
        assert not left, f"Ray processes left behind: {sorted(left)}"


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return make_benchmark(tmp_path_factory.mktemp("b")/"bench", n_train=8, n_val=4, size=48, seed=1, progress=False)


def _spec(bench, rows=("a", "b", "bad protocol"), extra=()):
    known = {"a": Row("a", {}), "b": Row("b", {"crop": 40}),
             "bad protocol": Row("bad protocol", {}, params={"protocol": "nosuch"})}   # raises in the notebook
    return TableSpec(id="tiny_ray", paper="ssss", paper_table="Table 0", caption="Ray against local", protocol=None,
                     base=dict(method="cam", epochs=1, crop=32, batch_size=4, device="cpu", data_root=str(bench)),
                     rows=[known[r] for r in rows] + list(extra))


def test_ray_table_equals_local(cluster, bench, tmp_path, monkeypatch, capsys):
    # both executors on one thread per point: the local kernels inherit this, the Ray tasks get cpus_per_point=1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    local = run_table(_spec(bench), runs_root=tmp_path/"local", out_dir=tmp_path/"local_tables")
    assert "3/3" in capsys.readouterr().err
    extra = [Row("odd", {}, params={"x": {1, 2}}),               # run_point itself raises (a set is not JSON)
             Row("on cuda", {"device": "cuda"})]                 # no node has a GPU: failed, never queued
    far = run_table(_spec(bench, extra=extra), runs_root=tmp_path/"ray", out_dir=tmp_path/"ray_tables",
                    executor="ray", address=cluster, cpus_per_point=1)
    assert "5/5" in capsys.readouterr().err                      # the bar counts points as they end, as locally
    assert not ray.is_initialized()                              # joined for the call, left after

    L, R = ({p["row"]: p for p in r["points"]} for r in (local, far))
    assert {k: p["status"] for k, p in L.items()} == {"a": "done", "b": "done", "bad protocol": "failed"}
    assert {k: p["status"] for k, p in R.items()} == {"a": "done", "b": "done", "bad protocol": "failed",
                                                      "odd": "failed", "on cuda": "failed"}
    for row in ("a", "b"):
        assert R[row]["value"] == L[row]["value"], row            # exactly equal, one thread each
        assert Path(R[row]["path"]).is_relative_to(tmp_path/"ray")
        got = [json.loads((Path(p["path"])/"results.json").read_text())["val"] for p in (R[row], L[row])]
        for g in got: g.pop("seconds")                            # the evaluation's wall time
        assert got[0] == got[1], row                              # every metric, not only the table's
    assert R["a"]["value"] != R["b"]["value"]
    assert R["bad protocol"]["error"] == L["bad protocol"]["error"] and "nosuch" in R["bad protocol"]["error"]
    assert R["odd"]["error"] == "TypeError: object of type set is not JSON serialisable", R["odd"]["error"]
    assert R["on cuda"]["error"] == "ConfigError: device='cuda': no node of the Ray cluster has a GPU"
    assert (far["failed"], far["written"]) == (3, True)
    md = (tmp_path/"ray_tables"/"tiny_ray.md").read_text()
    assert "TypeError: object of type set" in md and "| a |" in md

    # a re-run reuses what the Ray workers wrote (read by the driver: no task, no Ray)
    again = run_table(_spec(bench, rows=("a", "b")), runs_root=tmp_path/"ray", out_dir=tmp_path/"ray_tables",
                      executor="ray", address=cluster, progress=False)
    assert [(p["status"], p["value"]) for p in again["points"]] == [("reused", R["a"]["value"]),
                                                                   ("reused", R["b"]["value"])]
    # a task no node could run fails the call at once (it would wait in Ray's queue forever)
    with pytest.raises(ConfigError, match=r"cpus_per_point=3: no node of the Ray cluster has that many CPUs"):
        run_table(_spec(bench, rows=("a",)), runs_root=tmp_path/"other", out_dir=tmp_path/"other_tables",
                  executor="ray", address=cluster, cpus_per_point=3, progress=False)


PROBE = """import json, os, signal
from pathlib import Path
first = Path(results_path).with_name("first_attempt")
if die_once and not first.exists():      # the first attempt takes its Ray worker down, as a lost node would
    first.write_text(str(os.getppid()))
    os.kill(os.getppid(), signal.SIGKILL)
    os._exit(1)
import torch
Path(results_path).write_text(json.dumps(dict(val={"mIoU": 0.5}, threads=torch.get_num_threads(),
                                              omp=os.environ.get("OMP_NUM_THREADS"), worker=os.getppid())))"""


def test_ray_local_instance_threads_and_retry(bench, tmp_path, monkeypatch):
    """`address=None` starts a Ray on this machine for the call and stops it after; a task's kernel has the CPUs it
    asked for as torch threads; a task whose worker dies is run again on another worker."""
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}, "language_info": {"name": "python"}})
    nb.cells = [nbformat.v4.new_code_cell("config = {}\nresults_path = None\ndie_once = False",
                                          metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(PROBE)]
    (tmp_path/"nbs").mkdir()
    nbformat.write(nb, tmp_path/"nbs"/"probe.ipynb")
    spec = TableSpec(id="probe", paper="ssss", paper_table="Table 0", caption="threads and retries", protocol=None,
                     experiment="probe", base=dict(device="cpu", data_root=str(bench)),
                     rows=[Row("survivor", {}, params={"die_once": True})])
    _auth(monkeypatch)
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")             # the local Ray's logs (short: its sockets too)
    monkeypatch.setenv("RAY_TMPDIR", temp)
    before = _descendants(os.getpid())
    try:
        r = run_table(spec, runs_root=tmp_path/"runs", out_dir=tmp_path/"tables", notebooks=tmp_path/"nbs",
                      executor="ray", cpus_per_point=2, progress=False)
        assert not ray.is_initialized()
        left = _gone(_descendants(os.getpid()) - before)
        assert not left, f"Ray processes left behind: {sorted(left)}"
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    (p,) = r["points"]
    assert p["status"] == "done", p
    got = json.loads((Path(p["path"])/"results.json").read_text())
    assert (got["threads"], got["omp"]) == (2, "2")
    first_worker = int((Path(p["path"])/"first_attempt").read_text())
    assert got["worker"] != first_worker                           # retried on a new worker after the first died
