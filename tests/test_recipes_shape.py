"""Issue 16, release recipes: the shape-cues paper's training (`ShapeCues.official`, Sec. 4.1.2-4.1.3) as
`run_config(method="shape", recipe="official")`, built on the tiny backbone. No code was released: the recipe is the
paper as printed."""
import math

import pytest
import torch

from wsss_nb.core import ConfigError
from wsss_nb.train import make_optimizer, run_config, set_lr
from wsss_nb.zoo import build_method

NUM_CLASSES = 6   # background + 5


@pytest.fixture(scope="module")
def official():
    cfg = run_config(method="shape", recipe="official")
    model = build_method("shape", NUM_CLASSES, cfg.method_cfg, cfg.backbone_cfg)
    return cfg, model, make_optimizer(model, cfg)


def test_run_fields(official):
    cfg, _, _ = official
    assert cfg.backbone == "tiny"
    assert (cfg.optimizer, cfg.lr, cfg.lr_backbone, cfg.momentum, cfg.weight_decay) == ("sgd", 1e-2, 1e-3, 0.9, 1e-4)
    assert (cfg.schedule, cfg.poly_power) == ("poly", 0.9)
    # the paper states no bias or BN treatment: one lr per group, decay everywhere, BN trained
    assert (cfg.bias_lr_mult, cfg.bias_decay, cfg.freeze_bn) == (1.0, True, False)


def test_method_options(official):
    cfg, model, _ = official
    mc = cfg.method_cfg
    # what the recipe sets: DeepLabV3's 256-channel ASPP, a 256-channel decoder, SPR's class term as Eq. 5 prints it
    assert (mc["aspp_channels"], mc["decoder_channels"]) == (256, 256)
    assert (mc["spr_scores"], mc["spr_class_norm"]) == ("logits", "eq5")
    assert model.aspp.out_channels == 256
    # the paper's other values are the defaults (Sec. 4.1.3)
    assert (mc["spr_alpha"], mc["spr_iter"], tuple(mc["spr_dilations"])) == (0.8, 10, (1, 2, 4, 8, 12, 24))
    assert (mc["cutoff"], mc["cutoff_low"], mc["region_radius"], mc["region_margin"]) == (0.6, 0.2, 3, 3.0)
    assert (mc["scm_radius"], mc["scm_samples"], mc["scm_bandwidth"], mc["scm_tau"]) == (7, 9, 1.0, 0.5)
    assert mc["focal_penalty"] is False and mc["scm"] is True


def test_optimizer_groups(official):
    cfg, model, opt = official
    assert type(opt) is torch.optim.SGD
    groups = {g["name"]: g for g in opt.param_groups}
    assert sorted(groups) == ["backbone", "new"]
    assert (groups["backbone"]["lr"], groups["new"]["lr"]) == (1e-3, 1e-2)
    for g in groups.values():
        assert (g["momentum"], g["weight_decay"], g["base_lr"]) == (0.9, 1e-4, g["lr"])
    backbone = {id(p) for p in model.backbone.parameters()}
    assert {id(p) for p in groups["backbone"]["params"]} == backbone
    new = [id(p) for p in groups["new"]["params"]]
    assert len(new) == len(set(new)) and not set(new) & backbone
    assert len(backbone) + len(new) == len(list(model.parameters()))
    assert any(n.startswith("scm.") for n, p in model.named_parameters() if id(p) in set(new))   # SCM is new


def test_poly_schedule(official):
    cfg, _, opt = official
    f = set_lr(opt, cfg, 250, 1000)
    assert math.isclose(f, 0.75 ** 0.9)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3 * 0.75 ** 0.9, 1e-2 * 0.75 ** 0.9])
    set_lr(opt, cfg, 0, 1000)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-2]


def test_bn_trains(official):
    _, model, _ = official
    model.train()
    bns = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.training and m.weight.requires_grad for m in bns)


def test_run_values_win():
    cfg = run_config(method="shape", recipe="official", lr=0.05, **{"method_cfg.spr_class_norm": "pamr"})
    assert (cfg.lr, cfg.lr_backbone, cfg.method_cfg["spr_class_norm"], cfg.method_cfg["spr_scores"]) == (
        0.05, 1e-3, "pamr", "logits")
    bench = run_config(method="shape")
    mc = bench.method_cfg
    assert (bench.optimizer, mc["spr_class_norm"], mc["spr_scores"], mc["aspp_channels"]) == (
        "adamw", "pamr", "probs", None)             # None: the backbone's head width (issue 17)
    with pytest.raises(ConfigError, match="spr_class_norm"):
        run_config(method="shape", recipe="official", **{"method_cfg.spr_class_norm": "sigma2"})
