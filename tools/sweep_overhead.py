"""Wall time of a tiny table (N distinct cam points, 1 epoch, 8 images of 48 px, one torch thread each) run with one
executor: `python tools/sweep_overhead.py --executor local --jobs 1`, `... --executor ray [--address HOST:PORT]`.
Each call runs fresh points (a new runs root) and prints the seconds of `run_table`, all in, and per point."""

import argparse, os, tempfile, time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")     # the local kernels' threads, as a Ray task's with cpus_per_point=1
os.environ.setdefault("MKL_NUM_THREADS", "1")

from wsss_nb.synthetic import make_benchmark     # noqa: E402  (after the thread settings)
from wsss_nb.table_runs import run_table          # noqa: E402
from wsss_nb.tables import Row, TableSpec         # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--executor", choices=["local", "ray"], default="local")
    p.add_argument("--address", default=None)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--points", type=int, default=4)
    p.add_argument("--root", default=str(Path(tempfile.gettempdir())/"wsss_sweep_overhead"), help="benchmark and runs")
    a = p.parse_args()
    root = Path(a.root)
    bench = make_benchmark(root/"bench", n_train=8, n_val=4, size=48, seed=1, progress=False)
    rows = [Row(f"p{k}", {"lr": 3e-3 * (1 + k / 100)}) for k in range(a.points)]     # distinct configs, same work
    spec = TableSpec(id="overhead", paper="ssss", paper_table="Table 0", caption="executor overhead", protocol=None,
                     base=dict(method="cam", epochs=1, crop=32, batch_size=4, device="cpu", data_root=str(bench)),
                     rows=rows)
    runs = Path(tempfile.mkdtemp(prefix="runs_", dir=root))
    t0 = time.time()
    r = run_table(spec, runs_root=runs, out_dir=runs/"tables", jobs=a.jobs, executor=a.executor, address=a.address,
                  progress=False)
    wall = time.time() - t0
    inside = sum(pt["seconds"] for pt in r["points"])
    print(f"{a.executor} jobs={a.jobs} address={a.address}: {len(r['points'])} points, {r['failed']} failed; "
          f"run_table {wall:.1f} s ({wall / len(r['points']):.1f} s per point); run_point's own seconds summed "
          f"{inside:.1f} s ({inside / len(r['points']):.1f} per point)")


if __name__ == "__main__":
    main()
