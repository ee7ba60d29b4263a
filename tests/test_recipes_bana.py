"""BANA's release recipes (issue 16): `recipe="official"` builds cvlab-yonsei/BANA's optimiser groups, schedules and
BatchNorm state for `bana_cls` (configs/stage1.yml, stage1.py) and `bana_seg` (configs/stage3_vgg.yml / stage3_res.yml,
stage3_vgg.py, models/SegNet.py) on the tiny backbone, directly and through `BanaConfig(recipe="official")`."""
import torch
import torch.nn as nn

from wsss_nb.bana import bana_config, stage1_config, stage3_config
from wsss_nb.heads import ASPPV2
from wsss_nb.train import make_optimizer, run_config, set_lr, train_step
from wsss_nb.zoo import build_method

ROOT = "/nonexistent/wsss-nb-recipes-bana"   # no data is read: configs, models and optimisers only
NUM_CLASSES = 4


def _build(cfg):
    torch.manual_seed(0)
    model = build_method(cfg.method, NUM_CLASSES, cfg.method_cfg, cfg.backbone_cfg)
    return model, make_optimizer(model, cfg)


def _groups(opt):
    return [(g["name"], g["lr"], g["weight_decay"], g["momentum"]) for g in opt.param_groups]


def _bns(model):
    return [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]


def _ids(ps):
    return {id(p) for p in ps}


def _box_batch():
    torch.manual_seed(1)
    return dict(image=torch.randn(2, 3, 64, 64),
                boxes=[torch.tensor([[8., 8, 40, 32, 1], [30, 30, 50, 60, 3]]), torch.tensor([[0., 0, 64, 56, 2]])])


def _seg_batch():
    torch.manual_seed(2)
    y = torch.randint(0, NUM_CLASSES, (2, 64, 64))
    return dict(image=torch.randn(2, 3, 64, 64), mask=y, yret=torch.where(torch.rand(2, 64, 64) < 0.3, 0, y))


def _check_stage1(cfg):
    "stage1.py: SGD(momentum 0.9) over [weights 1e-3 decay 5e-4, biases 2e-3 no decay, classifier 1e-2 decay 5e-4]."
    assert (cfg.recipe, cfg.optimizer, cfg.schedule, cfg.freeze_bn) == ("official", "sgd", "step", False)
    assert (cfg.method_cfg["roi_bins"], cfg.method_cfg["min_background"], cfg.method_cfg["grid_size"]) == (2, .125, 4)
    model, opt = _build(cfg)
    assert type(opt) is torch.optim.SGD
    assert _groups(opt) == [("backbone", 1e-3, 5e-4, 0.9), ("backbone_bias", 2e-3, 0.0, 0.9), ("new", 1e-2, 5e-4, 0.9)]
    g = {x["name"]: _ids(x["params"]) for x in opt.param_groups}
    assert g["new"] == {id(model.classifier.weight)} and model.classifier.bias is None   # no classifier bias (20×)
    assert g["backbone_bias"] == _ids(n.bias for n in _bns(model))                      # the tiny convs have none
    assert [set_lr(opt, cfg, i, 8000) for i in (4999, 5000)] == [1.0, 0.1]   # the release: ÷10 at 5000 of 8000
    model.train()
    assert _bns(model) and all(b.training and b.weight.requires_grad for b in _bns(model))
    before = model.classifier.weight.detach().clone()
    terms = train_step(model, opt, _box_batch(), cfg)
    assert torch.isfinite(terms["total"]) and not torch.equal(before, model.classifier.weight)
    out = model(_box_batch())
    assert out["fg_logits"].shape == (12, NUM_CLASSES)          # 3 boxes × 2×2 bins


def _check_stage3_v1(cfg):
    "stage3_vgg.py: the same four Caffe groups (1e-3 / 2e-3 / 1e-2), poly 0.9, BN training, σ not detached."
    assert (cfg.recipe, cfg.optimizer, cfg.schedule, cfg.poly_power, cfg.freeze_bn) == ("official", "sgd", "poly", .9,
                                                                                       False)
    assert (cfg.method_cfg["head"], cfg.method_cfg["detach_sigma"], cfg.method_cfg["tau"]) == ("none", False, 20.0)
    model, opt = _build(cfg)
    assert _groups(opt) == [("backbone", 1e-3, 5e-4, 0.9), ("backbone_bias", 2e-3, 0.0, 0.9), ("new", 1e-2, 5e-4, 0.9)]
    assert {id(p) for x in opt.param_groups if x["name"] == "new" for p in x["params"]} == {id(model.classifier.weight)}
    assert abs(set_lr(opt, cfg, 50, 100) - 0.5 ** 0.9) < 1e-12
    assert [x["lr"] for x in opt.param_groups] == [f * 0.5 ** 0.9 for f in (1e-3, 2e-3, 1e-2)]
    model.train()
    assert all(b.training and b.weight.requires_grad for b in _bns(model))
    assert torch.isfinite(train_step(model, opt, _seg_batch(), cfg)["total"])


def test_bana_cls_official():
    _check_stage1(run_config(method="bana_cls", recipe="official", data_root=ROOT))


def test_bana_seg_official():
    _check_stage3_v1(run_config(method="bana_seg", recipe="official", data_root=ROOT,
                                **{"method_cfg.pseudo_dir": "/tmp/x"}))


def test_benchmark_recipe_keeps_todays_options():
    c = run_config(method="bana_cls", data_root=ROOT)
    s = run_config(method="bana_seg", data_root=ROOT)
    assert (c.optimizer, c.method_cfg["roi_bins"], c.method_cfg["min_background"]) == ("adamw", 1, 0.0)
    assert (s.optimizer, s.method_cfg["detach_sigma"], s.method_cfg["head"]) == ("adamw", True, "none")


def test_bana_config_official_stages():
    b = bana_config(data_root=ROOT, out_dir="/nonexistent/wsss-nb-recipes-bana-runs", recipe="official")
    _check_stage1(stage1_config(b))
    _check_stage3_v1(stage3_config(b))


def test_bana_config_official_v2():
    "stage3_res.yml + DeepLab_ASPP: backbone 2.5e-4, ASPP and classifier 10×, no bias groups, BN training."
    b = bana_config(data_root=ROOT, out_dir="/nonexistent/wsss-nb-recipes-bana-runs", recipe="official",
                    seg_cfg={"head": "v2"})
    cfg = stage3_config(b)
    assert (cfg.optimizer, cfg.lr, cfg.lr_backbone, cfg.schedule, cfg.bias_lr_mult, cfg.bias_decay, cfg.freeze_bn) == (
        "sgd", 2.5e-3, 2.5e-4, "poly", 1.0, True, False)
    model, opt = _build(cfg)
    assert _groups(opt) == [("backbone", 2.5e-4, 5e-4, 0.9), ("new", 2.5e-3, 5e-4, 0.9)]
    v2 = model.head[0]
    assert isinstance(v2, ASPPV2) and v2.rates == (6, 12, 18, 24) and v2.out_channels == 256
    new = {id(p) for x in opt.param_groups if x["name"] == "new" for p in x["params"]}
    assert new == _ids(list(v2.parameters()) + [model.classifier.weight]) and len(new) == 5   # 4 branches, no biases
    assert model.cfg.detach_sigma is False
    model.train()
    assert all(bn.training for bn in _bns(model))
    assert torch.isfinite(train_step(model, opt, _seg_batch(), cfg)["total"])
