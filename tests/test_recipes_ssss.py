"""Release recipes of visinf/1-stage-wseg (issue 16): `recipe="official"` of `ssss` and of the `cam` baseline builds the
release's optimiser groups, schedule and BatchNorm state on the tiny backbone. The values are read from the release's
`base_trainer.py`, `train.py`, `models/backbones/base_net.py`, `models/stage_net.py` and `configs/voc_resnet38.yaml`
(see "The release's recipe" in nbs/10_cam.ipynb and nbs/12_ssss.ipynb)."""
import pytest
import torch
from torch import nn

from wsss_nb.train import make_optimizer, run_config, set_lr, train_step
from wsss_nb.zoo import build_method

ROOT = "/nonexistent/wsss-nb-recipes"   # configs only: no data is read
# (group, lr, weight decay) of the release: base lr 1e-3, _lr_mult (1, 2, 10, 20), no decay on biases. The tiny
# backbone's convolutions have no bias and its BatchNorms are frozen: no "backbone_bias" group; cam's fc8 has no bias.
GROUPS = {"ssss": [("backbone", 1e-3, 5e-4), ("new", 1e-2, 5e-4), ("new_bias", 2e-2, 0.0)],
          "cam": [("backbone", 1e-3, 5e-4), ("new", 1e-2, 5e-4)]}


def _official(method):
    cfg = run_config(method=method, recipe="official", data_root=ROOT)
    torch.manual_seed(0)
    model = build_method(method, 4, cfg.method_cfg, cfg.backbone_cfg)
    return cfg, model, make_optimizer(model, cfg)


def _bns(module):
    return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]


def _batch():
    g = torch.Generator().manual_seed(1)
    return dict(image=torch.randn(2, 3, 64, 64, generator=g), image_raw=torch.rand(2, 3, 64, 64, generator=g),
                labels=torch.tensor([[1.0, 0, 0], [0, 1, 1]]))


@pytest.mark.parametrize("method", ["ssss", "cam"])
def test_official_optimiser(method):
    cfg, model, opt = _official(method)
    assert (cfg.optimizer, cfg.momentum, cfg.bias_lr_mult, cfg.bias_decay) == ("sgd", 0.9, 2.0, False)
    assert type(opt) is torch.optim.SGD
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in opt.param_groups] == GROUPS[method]
    assert all(g["momentum"] == 0.9 and not g["nesterov"] and g["dampening"] == 0 for g in opt.param_groups)
    grouped = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters() if p.requires_grad)   # each once
    names = {id(p): n for n, p in model.named_parameters()}
    by_name = {g["name"]: [names[id(p)] for p in g["params"]] for g in opt.param_groups}
    # the backbone trains its convolutions only; its BatchNorms are frozen and in no group
    assert by_name["backbone"] == [f"backbone.{n}" for n, p in model.backbone.named_parameters() if p.dim() == 4]
    assert not any(p.requires_grad for bn in _bns(model.backbone) for p in bn.parameters())
    if method == "cam":
        assert by_name["new"] == ["head.classifier.weight"]
    else:
        aspp_bn = [n for n, m in model.named_modules() if n.startswith("aspp.") and isinstance(m, nn.BatchNorm2d)]
        assert aspp_bn and all(f"{n}.weight" in by_name["new"] and f"{n}.bias" in by_name["new_bias"] for n in aspp_bn)
        assert all(n.endswith(".bias") for n in by_name["new_bias"]) and "head.3.bias" in by_name["new_bias"]


@pytest.mark.parametrize("method", ["ssss", "cam"])
def test_official_constant_schedule(method):
    cfg, _, opt = _official(method)
    assert cfg.schedule == "constant"
    for it in (0, 1, 57, 99):
        assert set_lr(opt, cfg, it, 100) == 1.0
        assert [g["lr"] for g in opt.param_groups] == [lr for _, lr, _ in GROUPS[method]]


def test_official_sgd_step_by_hand():
    "One step from a zero momentum buffer: p ← p − lr·(g + wd·p), lr and wd of the parameter's group."
    cfg, model, opt = _official("ssss")
    model.train()
    batch = _batch()
    model.losses(batch, model(batch), 5)["total"].backward()
    pick = dict(backbone=model.backbone.conv1.weight, new=model.aspp.branches[0][1].weight,
                new_bias=model.aspp.branches[0][1].bias)
    before = {k: (p.detach().clone(), p.grad.clone()) for k, p in pick.items()}
    opt.step()
    for (name, lr, wd) in GROUPS["ssss"]:
        p0, g = before[name]
        assert g.abs().sum() > 0, name
        torch.testing.assert_close(pick[name].detach(), p0 - lr * (g + wd * p0), rtol=0, atol=1e-7)


def test_official_ssss_model_and_batchnorm():
    cfg, model, opt = _official("ssss")
    assert (cfg.freeze_bn, cfg.method_cfg["freeze_aspp_bn"], cfg.method_cfg["pretrain_epochs"]) == (True, True, 5)
    assert (model.aspp.out_channels, model.decoder.out_channels, model.head[-1].in_channels) == (256, 256, 256)
    model.train()
    assert all(not bn.training and not bn.weight.requires_grad for bn in _bns(model.backbone))
    assert all(not bn.training and bn.weight.requires_grad and bn.bias.requires_grad for bn in _bns(model.aspp))
    assert all(bn.training for bn in _bns(model.decoder) + _bns(model.shallow) + _bns(model.head))
    # a step of the trainer: the frozen statistics stay, the ASPP's affine parameters and the decoder's statistics move
    state = {k: v.clone() for k, v in model.state_dict().items()}
    train_step(model, opt, _batch(), cfg, epoch=5)
    after = model.state_dict()
    same = lambda k: torch.equal(after[k], state[k])
    assert all(same(k) for k in state if k.startswith(("backbone.", "aspp.")) and "running_" in k)
    assert all(same(k) for k in state if k.startswith("backbone.") and k.rsplit(".", 1)[0] in
               {n for n, m in model.backbone.named_modules(prefix="backbone") if isinstance(m, nn.BatchNorm2d)})
    assert not same("aspp.branches.0.1.weight") and not same("decoder.skip.1.running_mean")


def test_official_cam_model():
    cfg, model, _ = _official("cam")
    assert (cfg.freeze_bn, cfg.method_cfg["bg_score"], cfg.method_cfg["dropout"]) == (True, 0.1, 0.5)
    assert isinstance(model.drop, nn.Dropout2d) and model.drop.p == 0.5
    model.train()
    assert all(not bn.training and not bn.weight.requires_grad for bn in _bns(model))   # all of them the backbone's


@pytest.mark.parametrize("method", ["ssss", "cam"])
def test_benchmark_recipe_untouched(method):
    b = run_config(method=method, data_root=ROOT)
    assert (b.optimizer, b.freeze_bn, b.bias_lr_mult, b.bias_decay) == ("adamw", False, 1.0, True)
    new = {"ssss": ("freeze_aspp_bn", False), "cam": ("dropout", 0.0)}[method]
    assert b.method_cfg[new[0]] == new[1]
    o = run_config(method=method, recipe="official", data_root=ROOT)
    assert run_config(o, recipe="benchmark") == b                       # switching back drops the release's options
    model = build_method(method, 4, b.method_cfg, b.backbone_cfg).train()
    assert all(bn.training for bn in _bns(model))
