"""Project-level checks: requirement lists agree, the commands the README promises exist."""
import configparser, re

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
    env_reqs = [l for l in pip_lines if l != "-e ."]
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
