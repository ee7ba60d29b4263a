"""A run killed by a signal mid-training and started again ends with the same numbers as one never stopped."""
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path

from wsss_nb.synthetic import make_benchmark

EXE = shutil.which("wsss-nb") or str(Path(sys.executable).parent / "wsss-nb")


def _cmd(bench, out):
    sets = [f"data_root={bench}", "method=full", "epochs=3", "crop=48", "batch_size=4", "max_train_images=48",
            "device=cpu", "progress=false", f"out_dir={out}", "method_cfg.aspp_channels=16",
            "method_cfg.decoder_channels=16", "lr=0.02"]
    return [EXE, "train", *sum((["--set", s] for s in sets), [])]


def _history(out):
    (run,) = [p for p in Path(out).iterdir() if p.is_dir()]
    h = json.loads((run / "metrics.json").read_text())["history"]
    return [{k: v for k, v in e.items() if k != "seconds"} for e in h]


def test_kill_and_resume_matches_uninterrupted(tmp_path):
    bench = make_benchmark(tmp_path / "bench", n_train=48, n_val=4, size=48, seed=3, progress=False)
    ref = subprocess.run(_cmd(bench, tmp_path / "ref"), capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr

    out = tmp_path / "killed"
    p = subprocess.Popen(_cmd(bench, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:          # wait for the first epoch's checkpoint
        ms = list(out.glob("*/metrics.json"))
        if ms and len(json.loads(ms[0].read_text())["history"]) >= 1: break
        time.sleep(0.05)
    time.sleep(0.3)                                               # now inside epoch 2
    assert p.poll() is None, "the run ended before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert len(_history(out)) < 3                                 # really interrupted

    again = subprocess.run(_cmd(bench, out), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert _history(out) == _history(tmp_path / "ref")
    assert not list(out.glob("*/.*.tmp"))                         # no temporary files left behind
