"""The installed distribution: every package listed, and nothing claims a user's `train`.

`pip install .` puts `jaxla`, `pallas_kernels` and `jaxla_train` (this repository's `train/`)
into site-packages, with a `jaxla-train` console script; `python -m train` stays the way to run
it from the repository root.
"""

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]


def _folder(package: str) -> Path:
    top, *rest = package.split(".")
    return ROOT.joinpath(SETUPTOOLS["package-dir"].get(top, top), *rest)


def test_every_package_is_listed_and_none_is_named_train():
    """The explicit package list (needed for the `jaxla_train` <- `train/` mapping) holds every
    folder with an `__init__.py` under the three trees, and only those."""
    listed = set(SETUPTOOLS["packages"])
    assert all(_folder(p).joinpath("__init__.py").is_file() for p in listed), listed
    found = {
        ".".join(("jaxla_train" if top == "train" else top,
                  *init.parent.relative_to(ROOT / top).parts))
        for top in ("jaxla", "pallas_kernels", "train")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert listed == found
    assert not any(p == "train" or p.startswith("train.") for p in listed)


def _run(*cmd, cwd, check=True):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={"PATH": "/usr/bin:/bin", "HOME": str(cwd)})
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _purelib(python) -> str:
    return subprocess.check_output(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        text=True).strip()


@pytest.mark.slow
def test_pip_install_leaves_train_to_the_user(tmp_path):
    """A fresh virtual environment over this one's packages (a .pth line: no downloads) gets
    `pip install --no-deps .` of a copy of the sources; a user's own `train.py` in the working
    directory is the `train` they import, beside the installed jaxla, and `jaxla-train --help`
    works."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        (src / name).write_bytes((ROOT / name).read_bytes())
    for top in ("jaxla", "pallas_kernels", "train"):
        for path in (ROOT / top).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                dest = src / path.relative_to(ROOT)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(path.read_bytes())
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    Path(_purelib(python), "host-packages.pth").write_text(_purelib(sys.executable) + "\n")
    _run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-build-isolation",
         src, cwd=tmp_path)

    user = tmp_path / "user"
    user.mkdir()
    (user / "train.py").write_text("WHOSE = 'the user'\n")
    site = _purelib(python)
    probe = ("import jaxla, jaxla.flops, jaxla_train, pallas_kernels.gla, train; "
             "print(jaxla.__file__); print(jaxla_train.__file__); print(train.__file__); "
             "print(train.WHOSE)")
    lines = _run(python, "-c", probe, cwd=user).stdout.splitlines()
    assert lines[0].startswith(site) and lines[1].startswith(site), lines
    assert lines[2:] == [str(user / "train.py"), "the user"]
    # Without the user's file there is no `train` at all: the distribution does not claim it.
    missing = _run(python, "-c", "import train", cwd=tmp_path, check=False)
    assert missing.returncode == 1 and "No module named 'train'" in missing.stderr
    help_text = _run(venv / "bin" / "jaxla-train", "--help", cwd=user).stdout
    assert help_text.startswith("usage: ") and "--preset" in help_text
    assert "jaxla-train ARGS" in help_text
