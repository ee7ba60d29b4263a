"""One run on two processes: real `torchrun --nproc_per_node 2` launches (gloo, CPU) of `python -m wsss_nb train`.

Every launch has a timeout, so a hang fails the test instead of blocking CI; torchrun's `--standalone` picks a free
port for its rendezvous, so launches never collide with each other or with other jobs."""
import json, os, shutil, signal, subprocess, sys, textwrap, time
from pathlib import Path

import numpy as np
import pytest
import torch

from wsss_nb.data import VOCDataset
from wsss_nb.synthetic import make_benchmark
from wsss_nb.train import load_checkpoint, make_datasets, make_optimizer, run_config, run_dir, train_step, validate
from wsss_nb.zoo import build_method

BIN = Path(sys.executable).parent
TORCHRUN = shutil.which("torchrun") or str(BIN / "torchrun")
TIMEOUT = 300                                   # seconds for one launch; a tiny one takes ~5-15 s here


def _env(**extra):
    "The test's own environment (PYTHONPATH included), with the venv's console scripts on PATH."
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **extra}


def _launch(*args):
    return [TORCHRUN, "--standalone", "--nproc_per_node", "2", *args]


def _run(cmd, **env):
    "Run `cmd` to its end (TIMEOUT at most: then it and every process it started are killed); its stdout."
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(**env),
                         start_new_session=True)
    try: out, err = p.communicate(timeout=TIMEOUT)
    finally:
        if p.poll() is None: os.killpg(p.pid, signal.SIGKILL)      # a hang: the workers go with torchrun
    assert p.returncode == 0, _failure(err)
    return out


def _failure(err: str) -> str:
    "What the processes of a failed launch said (torchrun's own report is long and says little)."
    lines = [ln for ln in err.splitlines() if not ln.startswith(("W1", "I1")) and "torch/distributed/" not in ln]
    return "\n".join(lines[:60] + ["..."] + lines[-30:])


def _sets(cfg: dict) -> list:
    return [a for k, v in cfg.items() for a in ("--set", f"{k}={json.dumps(v)}")]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return make_benchmark(tmp_path_factory.mktemp("ddp") / "bench", n_train=8, n_val=4, size=32, seed=0,
                          progress=False)


def _tiny(bench, **kw):
    return {**dict(method="cam", data_root=str(bench), crop=32, batch_size=4, epochs=1, device="cpu", progress=False),
            **kw}


def _strip(history):
    return [{k: v for k, v in e.items() if k != "seconds"} for e in history]


EPOCHS = 6


@pytest.fixture(scope="module")
def launched(bench, tmp_path_factory):
    "A launch of two processes that trains a tiny `cam` run for EPOCHS epochs: (config, stdout)."
    cfg = _tiny(bench, epochs=EPOCHS, out_dir=str(tmp_path_factory.mktemp("ddp") / "runs"))
    return cfg, _run(_launch("-m", "wsss_nb", "train", *_sets(cfg)))


def test_launch_trains_the_run_of_one_process(bench, launched, tmp_path):
    "(a) The launch writes the folder (same hash) of the same run in one process; its checkpoint loads in one."
    cfg, stdout = launched
    assert len(stdout.strip().splitlines()) == 1 and stdout.startswith("run "), stdout   # rank 0 prints
    _run([sys.executable, "-m", "wsss_nb", "train", *_sets({**cfg, "out_dir": str(tmp_path / "one")})],
         OMP_NUM_THREADS="1")                                      # the same run in one process
    (rd,), (rd1,) = ([p for p in Path(d).iterdir() if p.is_dir()] for d in (cfg["out_dir"], tmp_path / "one"))
    assert rd.name == rd1.name == run_config(cfg).key
    one = json.loads((rd1 / "metrics.json").read_text())
    m = json.loads((rd / "metrics.json").read_text())
    assert [e["epoch"] for e in m["history"]] == list(range(1, EPOCHS + 1))
    assert {e["world_size"] for e in m["history"]} == {2} and "world_size" not in one["history"][0]
    assert len((rd / "log.txt").read_text().splitlines()) == EPOCHS             # one writer
    read = lambda d: json.loads((Path(d) / "config.json").read_text())
    assert read(rd) == {**read(rd1), "out_dir": cfg["out_dir"]}
    # the checkpoint loads in one process, which scores it as the launch's sharded validation did
    c = run_config(cfg)
    model = build_method(c.method, VOCDataset(bench, "val").num_classes, c.method_cfg, c.backbone_cfg)
    load_checkpoint(rd / "checkpoint.pt", model)
    v = validate(model, make_datasets(c)[1])
    assert {k: v[k] for k in ("mIoU", "bIoU", "F", "n_images")} == {k: m["final"][k] for k in ("mIoU", "bIoU", "F",
                                                                                               "n_images")}


GRAD_SCRIPT = textwrap.dedent('''
    import json, sys, torch
    from wsss_nb.core import seed_everything
    from wsss_nb.data import VOCDataset
    from wsss_nb.train import (ddp_model, dist_env, join_launch, launch_device, make_datasets, make_optimizer,
                               run_config, train_loader, train_step)
    from wsss_nb.zoo import build_method
    cfg, out = run_config(**json.loads(sys.argv[1])), sys.argv[2]
    env = dist_env()
    device = launch_device(cfg, env)
    join_launch(env, device)
    seed_everything(cfg.seed)                                     # as `train` builds the run's model
    model = build_method(cfg.method, VOCDataset(cfg.data_root, "val").num_classes, cfg.method_cfg, cfg.backbone_cfg)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    train_ds, _ = make_datasets(cfg)
    opt, net = make_optimizer(model, cfg), ddp_model(model, cfg, env, device)
    seed_everything(cfg.seed * 100_003 + env.rank * 1_000_003)   # epoch 0, as `train` seeds it
    batch = next(iter(train_loader(train_ds, cfg, 0, env)))
    net.train()
    terms = train_step(net, opt, batch, cfg)                      # the run's step: DDP averages the gradients
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    torch.save(dict(batch=batch, grads=grads, init=init, terms=terms), f"{out}/rank{env.rank}.pt")
''')


def _cat(a, b):
    return torch.cat([a, b]) if isinstance(a, torch.Tensor) else [*a, *b]


def test_first_step_gradient_is_the_global_batch_gradient(bench, tmp_path):
    """(b) The averaged gradient of the launch's first step equals one process's gradient on both ranks' batches.
    `cam` has no dropout by default and `freeze_bn` fixes the backbone's BatchNorm statistics: batch statistics over
    half a batch differ from those over the whole by construction. Its loss (and FSL's) is a mean over images, so
    the average of the two ranks' gradients is the gradient of the global batch."""
    cfg = _tiny(bench, freeze_bn=True, **{"fsl.weight": 1.0}, out_dir=str(tmp_path / "runs"))
    (tmp_path / "grad.py").write_text(GRAD_SCRIPT)
    _run(_launch(str(tmp_path / "grad.py"), json.dumps(cfg), str(tmp_path)))
    r0, r1 = (torch.load(tmp_path / f"rank{i}.pt", weights_only=False) for i in (0, 1))
    assert not set(r0["batch"]["name"]) & set(r1["batch"]["name"])            # the sampler's disjoint shares
    assert len(r0["batch"]["name"]) == len(r1["batch"]["name"]) == 2           # batch_size 4 = 2 × 2
    c = run_config(**cfg)
    model = build_method(c.method, VOCDataset(bench, "val").num_classes, c.method_cfg, c.backbone_cfg)
    model.load_state_dict(r0["init"])
    for k, v in r1["init"].items(): assert torch.equal(v, r0["init"][k])        # the same initial model
    whole = {k: _cat(r0["batch"][k], r1["batch"][k]) for k in r0["batch"]}
    model.train()
    terms = train_step(model, make_optimizer(model, c), whole, c)
    one = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(one) == set(r0["grads"]) == set(r1["grads"]) and len(one) > 10
    worst = max(float((r[n] - g).abs().max()) for r in (r0["grads"], r1["grads"]) for n, g in one.items())
    assert worst <= 1e-5, worst
    mean = (r0["terms"]["total"] + r1["terms"]["total"]) / 2                 # the ranks' mean loss: the batch's
    assert abs(float(mean - terms["total"])) <= 1e-6


def _workers(pid: int) -> dict:
    "{RANK: pid} of the processes torchrun `pid` started (read from /proc)."
    out = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit(): continue
        try:
            if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) != pid: continue
            env = dict(kv.split("=", 1) for kv in (p / "environ").read_bytes().decode(errors="replace").split("\0")
                       if "=" in kv)
        except (OSError, IndexError, ValueError):
            continue
        if "RANK" in env: out[int(env["RANK"])] = int(p.name)
    return out


def test_resume_after_one_rank_is_killed(launched, tmp_path):
    """(c) SIGKILL of rank 1 after the first checkpoint; the same command again resumes the run and ends with the
    numbers of the launch never interrupted (each epoch reseeds every process from the seed, the epoch and its rank)."""
    epochs = EPOCHS
    cfg = {**launched[0], "out_dir": str(tmp_path / "killed")}
    cmd = _launch("-m", "wsss_nb", "train", *_sets(cfg))
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(),
                         start_new_session=True)
    ck = run_dir(run_config(cfg)) / "checkpoint.pt"
    try:
        deadline = time.time() + TIMEOUT
        while time.time() < deadline and p.poll() is None and not ck.exists(): time.sleep(0.02)
        assert p.poll() is None, "the launch ended before it could be killed"
        os.kill(_workers(p.pid)[1], signal.SIGKILL)
        _, err = p.communicate(timeout=TIMEOUT)                   # torchrun stops rank 0 and fails
        assert p.returncode != 0 and "SIGKILL" in err, _failure(err)
    finally:
        if p.poll() is None: os.killpg(p.pid, signal.SIGKILL)
    before = torch.load(ck, weights_only=False)["history"]
    assert 1 <= len(before) < epochs                              # really interrupted
    _run(cmd)
    h = json.loads((ck.parent / "metrics.json").read_text())["history"]
    assert [e["epoch"] for e in h] == list(range(1, epochs + 1))
    assert h[:len(before)] == before                              # the saved epochs were kept, not trained again
    log = [json.loads(line)["epoch"] for line in (ck.parent / "log.txt").read_text().splitlines()]
    assert log == list(range(1, epochs + 1))                      # each epoch logged once
    assert not list(ck.parent.glob(".*.tmp"))
    ref = json.loads((run_dir(run_config(launched[0])) / "metrics.json").read_text())["history"]
    assert _strip(h) == _strip(ref)


METHODS_SCRIPT = textwrap.dedent('''
    import json, sys
    from wsss_nb.bana import run_bana
    from wsss_nb.train import dist_env, train
    bench, out = sys.argv[1], sys.argv[2]
    base = dict(data_root=bench, crop=32, batch_size=4, epochs=1, device="cpu", progress=False, out_dir=f"{out}/runs")
    small = dict(aspp_channels=8, decoder_channels=8)
    hfpl = {"isl.lam": 0.2, "fsl.weight": 1.0}
    heads = dict(small, skip_proj=8, pretrain_epochs=0, cutoff_low=0.0)   # the segmentation terms from the first
    # epoch; cut-offs of 0.95 keep each mask's peak pixels, so the pseudo GT of an untrained network is not empty
    runs = {"cam": train(dict(base, method="cam"), **hfpl),
            "ssss": train(dict(base, method="ssss", method_cfg=dict(heads, pamr_iter=2, cutoff_top=0.95,
                                                                 cutoff_bg=0.95)), **hfpl),
            "shape": train(dict(base, method="shape", method_cfg=dict(heads, scm_channels=8, spr_iter=2,
                                                                   cutoff=0.95)), **hfpl),
            "full": train(dict(base, method="full", method_cfg=small))}
    bana = run_bana(data_root=bench, out_dir=f"{out}/bana", cls_epochs=1, cls_crop=32, cls_batch_size=4,
                    cls_grid_size=2, seg_epochs=2, seg_crop=32, seg_batch_size=4, device="cpu", progress=False,
                    eval_crf=False)
    runs["bana_cls"] = train(json.load(open(f"{bana['stage1']}/config.json")))   # finished: returned at once
    runs["bana_seg"] = train(json.load(open(f"{bana['stage3']}/config.json")))
    json.dump(dict(runs=runs, bana=bana), open(f"{out}/rank{dist_env().rank}.json", "w"))
''')


def test_every_method_and_banas_stages_in_a_launch(bench, tmp_path):
    """(d) Every method trains in one launch (several `train` calls in each process: the group is joined once), the
    image-label ones with ISL and FSL; BANA's stages 1 and 3 train with both processes, stage 2 and the evaluation
    run in rank 0, and both processes return the same summary."""
    (tmp_path / "methods.py").write_text(METHODS_SCRIPT)
    _run(_launch(str(tmp_path / "methods.py"), str(bench), str(tmp_path)))
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))
    assert sorted(r0["runs"]) == ["bana_cls", "bana_seg", "cam", "full", "shape", "ssss"]
    for name, r in r0["runs"].items():
        h = json.loads((Path(r["run_dir"]) / "metrics.json").read_text())["history"]
        assert h == r["history"] and {e["world_size"] for e in h} == {2}, name
        assert all(np.isfinite(v) for e in h for k, v in e.items() if k.startswith("loss_")), name
        assert _strip(r1["runs"][name]["history"]) == _strip(h), name      # every process reports the same epochs
    for name in ("cam", "ssss", "shape"): assert {"loss_isl", "loss_fsl"} <= set(r0["runs"][name]["final"]), name
    assert r0["runs"]["ssss"]["final"]["loss_seg"] > 0 and r0["runs"]["shape"]["final"]["loss_pixel"] > 0
    assert r0["bana"] == r1["bana"] == json.loads((Path(r0["bana"]["stage3"]) / "bana.json").read_text())
    names = VOCDataset(bench, "train").names
    assert sorted(p.stem for p in (Path(r0["bana"]["pseudo_dir"]) / "ycrf").glob("*.png")) == sorted(names)
    conf = Path(r0["bana"]["stage3"]) / "confidence" / names[0]
    assert sorted(p.name for p in conf.glob("*.npy")) == ["epoch_000.npy", "epoch_001.npy", "epoch_002.npy"]
