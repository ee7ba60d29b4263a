"""Project-level checks: requirement lists agree, the commands the README promises exist."""
import ast, configparser, dataclasses, json, re, subprocess, sys

import yaml
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _settings():
    cfg = configparser.ConfigParser(delimiters=["="])
    cfg.read(ROOT / "settings.ini")
    return cfg["DEFAULT"]


def test_environment_yml_matches_settings_ini():
    s = _settings()
    settings_reqs = s["requirements"].split() + s["dev_requirements"].split()
    deps = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    pip_lines = next(d["pip"] for d in deps if isinstance(d, dict))
    env_reqs = [line for line in pip_lines if line != "-e ."]
    # same packages with the same version pins, in both lists
    assert sorted(settings_reqs) == sorted(env_reqs)
    assert "-e ." in pip_lines


def test_pinned_toolchain():
    s = _settings()
    reqs = s["requirements"].split() + s["dev_requirements"].split()
    for pin in ("torch==2.13.0", "nbdev==2.4.14", "execnb==0.1.18", "fastcore>=1.10,<1.13", "pydensecrf2"):
        assert pin in reqs, pin
    assert s["lib_name"] == "wsss_nb" and "wsss-nb=wsss_nb.cli:main" in s["console_scripts"]


def test_ci_and_readme_commands():
    assert "make test" in (ROOT / ".ci/run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make reproduce" in readme and "make test" in readme
    mk = (ROOT / "Makefile").read_text()
    for target in ("test:", "reproduce:", "sync-check:"):
        assert target in mk
    assert "nbdev_test" in mk and "pytest" in mk


def test_every_notebook_exports_a_module_that_exists():
    for nb in sorted((ROOT / "nbs").glob("[0-9]*.ipynb")):
        m = re.search(r"#\| default_exp (\w+)", nb.read_text())
        assert m, f"{nb.name} has no default_exp"
        assert (ROOT / "wsss_nb" / f"{m.group(1)}.py").exists(), nb.name


# ---- layers: the import graph of wsss_nb (issue 15) ----
PKG = ROOT / "wsss_nb"
LAZY_IMPORTS_OK = {"cli"}     # the top layer: imports lazily for start-up speed (still downward)


def _notebook_of(path: Path) -> tuple[int, str]:
    "(number, letter) of the notebook a module is exported from: 00a_plot → (0, 'a'), 52_bana → (52, '')."
    m = re.search(r"File to edit: \.\./nbs/(\d+)([a-z]?)_\w+\.ipynb", path.read_text(encoding="utf-8"))
    assert m, f"{path.name}: no 'File to edit' header"
    return int(m.group(1)), m.group(2)


def _imports(path: Path):
    "(imported wsss_nb module, imported names, inside a function?) for every import statement of a module."
    tree, mods = ast.parse(path.read_text(encoding="utf-8")), {p.stem for p in PKG.glob("*.py")}
    def visit(node, in_func):
        for child in ast.iter_child_nodes(node):
            deferred = in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level == 1: base = f"wsss_nb.{base}" if base else "wsss_nb"
                names = [a.name for a in child.names]
                if base == "wsss_nb":                             # `from wsss_nb import data`: modules by name
                    for n in names:
                        if n in mods: yield n, [], in_func
                elif base.startswith("wsss_nb."): yield base.split(".")[1], names, in_func
            elif isinstance(child, ast.Import):
                for a in child.names:
                    if a.name.startswith("wsss_nb."): yield a.name.split(".")[1], [], in_func
            yield from visit(child, deferred)
    yield from visit(tree, False)


def _modules():
    return {p.stem: p for p in sorted(PKG.glob("*.py")) if not p.stem.startswith("_")}


def test_imports_go_down_the_notebook_layers():
    "Every import of a wsss_nb module (module- or function-level) goes to a lower-numbered notebook: no cycle."
    mods = _modules()
    layer = {m: _notebook_of(p) for m, p in mods.items()}
    graph = {m: {t for t, _, _ in _imports(p)} for m, p in mods.items()}
    for m, targets in graph.items():
        for t in targets:
            assert t in layer, f"{m} imports wsss_nb.{t}, which does not exist"
            assert layer[t] < layer[m], f"{m} ({layer[m]}) imports {t} ({layer[t]}): imports must go to lower notebooks"
    state = {}                                                     # and, spelled out, no cycle
    def dfs(m, path):
        state[m] = "open"
        for t in graph[m]:
            assert state.get(t) != "open", f"import cycle: {' → '.join(path + [t])}"
            if t not in state: dfs(t, path + [t])
        state[m] = "done"
    for m in graph:
        if m not in state: dfs(m, [m])


def test_no_deferred_imports_below_the_cli():
    for m, p in _modules().items():
        if m in LAZY_IMPORTS_OK: continue
        lazy = [t for t, _, in_func in _imports(p) if in_func]
        assert not lazy, f"{m} imports {lazy} inside a function: import at the top (a lower notebook) instead"


def test_no_module_imports_another_modules_private_name():
    for m, p in _modules().items():
        for t, names, _ in _imports(p):
            private = [n for n in names if n.startswith("_")]
            assert not private, f"{m} imports private {private} from wsss_nb.{t}"


def test_build_method_from_a_bare_import():
    "The method table is explicit: one import of wsss_nb.zoo is enough (no registration by import side effects)."
    code = "from wsss_nb.zoo import build_method; print(type(build_method('ssss', 4)).__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "SSSS"


# the default method configs as they were before the nGWP base (issue 15): run configs and their hashes rest on them;
# issue 16 changed one on purpose: PAMR/SPR refine on the stride-4 grid by default (`pamr_resolution="features"`, as
# SSSS's `run_pamr`), a field ssss and shape now share (shape's `spr_resolution` was its name there); issue 17 another:
# the DeepLab heads' widths default to None, the backbone's `head_width` (32 on tiny, was 128); issue 20 added `full`'s
# `pseudo_dir` (the two-stage net's training labels; `added_later`, so at its default None no run key changed), and
# `cam`'s `min_pool` (SEAM's background loss, for the ISL reading; `added_later`, off by default: no key changed)
DEFAULT_METHOD_CONFIGS = {
    "bana_cls": {'grid_size': 4, 'pooling': 'bap', 'roi_samples': 1, 'min_background': 0.0, 'init_std': 0.01,
                 'roi_bins': 1},
    "bana_seg": {'pseudo_dir': None, 'loss': 'nal', 'gamma': 7.0, 'lam': 0.1, 'tau': 20.0, 'classifier': 'cosine',
                 'head': 'none', 'head_channels': 128, 'dropout': 0.1, 'bootstrap_power': 0.9, 'detach_sigma': True,
                 'confidence_names': None},
    "cam": {'bg_score': 0.2, 'label_threshold': 0.5, 'dropout': 0.0, 'min_pool': 0.0},
    "full": {'aspp_channels': None, 'decoder_channels': None, 'dropout': 0.1, 'pseudo_dir': None},
    "shape": {'aspp_channels': None, 'decoder_channels': None, 'skip_proj': 48, 'aspp_dropout': 0.5,
              'decoder_dropout': (0.5, 0.1), 'scm': True, 'scm_channels': 64, 'scm_source': 'image', 'scm_radius': 7,
              'scm_samples': 9, 'scm_bandwidth': 1.0, 'scm_patch': 3, 'scm_tau': 0.5, 'scm_drop_rate': 1.5,
              'ngwp_eps': 1.0, 'focal_penalty': False, 'focal_p': 3.0, 'focal_lambda': 0.01, 'spr_alpha': 0.8,
              'spr_iter': 10, 'spr_dilations': (1, 2, 4, 8, 12, 24), 'spr_scores': 'probs', 'spr_class_norm': 'pamr',
              'pamr_resolution': 'features',
              'cutoff': 0.6, 'cutoff_low': 0.2, 'pixel_loss': True, 'region_loss': True, 'region_radius': 3,
              'region_margin': 3.0, 'region_ramp_epochs': 6, 'pretrain_epochs': 3, 'freeze_aspp_bn': False},
    "ssss": {'aspp_channels': None, 'decoder_channels': None, 'skip_proj': 48, 'aspp_dropout': 0.5,
             'decoder_dropout': (0.5, 0.1), 'scores': 'ngwp', 'focal_penalty': True, 'focal_p': 3.0,
             'focal_lambda': 0.01, 'ngwp_eps': 1.0, 'pamr': True, 'pamr_iter': 10,
             'pamr_dilations': (1, 2, 4, 8, 12, 24), 'pamr_resolution': 'features', 'sg': True, 'sg_psi': 0.3,
             'gci': True, 'deterministic_gate': False, 'cutoff_top': 0.6, 'cutoff_bg': 0.7, 'cutoff_low': 0.2,
             'seg_weight': 1.0, 'pretrain_epochs': 3, 'freeze_aspp_bn': False},
}

# run keys of a few configs before issue 15 (a data_root without a generated benchmark: no data fingerprint); ssss and
# shape changed with issue 16's default (an ssss run at pamr_resolution="image" keeps its old key, 06101a3491)
GOLDEN_ROOT = "/nonexistent/wsss-nb-golden"
GOLDEN_KEYS = {"bana_cls": "1d39a40e07", "cam": "da622acb9b", "full": "4b7b212996", "shape": "21bb2c62f3",
               "ssss": "67853930db"}
# the run config's optimisation defaults before `recipe` (issue 16): since then a run left at None takes the recipe's
OLD = dict(optimizer="sgd", lr=0.01, lr_backbone=0.01, data_root=GOLDEN_ROOT)
# the DeepLab heads' widths before issue 17 (None since: the backbone's head_width): spelt out, a run keeps its folder
W128 = {"method_cfg.aspp_channels": 128, "method_cfg.decoder_channels": 128}
HEADS = ("full", "shape", "ssss")


def test_method_configs_unchanged():
    from wsss_nb.zoo import METHODS
    assert sorted(METHODS) == sorted(DEFAULT_METHOD_CONFIGS)
    for name, want in DEFAULT_METHOD_CONFIGS.items():
        assert dataclasses.asdict(METHODS[name].Config()) == want, name


def test_run_keys_unchanged():
    from wsss_nb.train import run_config
    from wsss_nb.bana import bana_config, pseudo_dir, stage1_config, stage3_config
    for m, key in GOLDEN_KEYS.items():
        w = W128 if m in HEADS else {}
        assert run_config(method=m, **OLD, **w).key == key, m
        if w: assert run_config(method=m, **OLD).key != key, m          # the new default width: new folders
        # the default recipe is the tables' calibrated AdamW setting, which they used to spell out: same folders
        explicit = dict(optimizer="adamw", lr=3e-3, lr_backbone=3e-3)
        assert run_config(method=m, data_root=GOLDEN_ROOT).key == run_config(method=m, **{**OLD, **explicit}).key, m
    assert (
        run_config(method="ssss", **OLD, **W128, **{"method_cfg.pamr_iter": 5, "method_cfg.sg": False}).key
        == "be7ad71d04"
    )
    old = run_config(method="ssss", **OLD, **W128, **{"method_cfg.pamr_resolution": "image"})
    assert old.key == "06101a3491"
    assert run_config(method="shape", **OLD, **W128,
                      **{"method_cfg.spr_alpha": 1.0, "method_cfg.region_loss": False}).key == "e7bb0b65fe"
    assert run_config(method="cam", **OLD, **{"isl.lam": 0.5}).key == "d5c1658939"
    assert (
        run_config(method="bana_seg", **OLD, **{"method_cfg.pseudo_dir": "/tmp/x"}).key == "d7e4bcb252"
    )
    b = bana_config(data_root=GOLDEN_ROOT, out_dir="/nonexistent/wsss-nb-golden-runs")
    assert (stage1_config(b).key, stage3_config(b).key) == ("d1a716ca8f", "6b88597341")
    assert str(pseudo_dir(b)) == "/nonexistent/wsss-nb-golden-runs/pseudo/b00c8ebd95"


def test_explorers_notebook_kept_without_outputs():
    "60_explore's widgets need a live kernel: the notebook is committed without outputs (`make clean-nbs` clears them)."
    nb = json.loads((ROOT/"nbs"/"60_explore.ipynb").read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and not [i for i, c in enumerate(code) if c.get("outputs") or c.get("execution_count")]
