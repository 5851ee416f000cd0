"""The package as users install it: a wheel (what `pip install .` builds and installs too),
installed into a fresh virtual environment and run from a folder outside the checkout, so that
nothing can come from the checkout: the Hydra configs must ship inside the package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from .conftest import REPO

PACKAGES = ("t2t", "problems", "modalities")
COMMANDS = ("t2t-problems", "t2t-datagen", "t2t-train", "t2t-decode", "t2t-eval", "t2t-average",
            "t2t-serve", "t2t-export")
# Not part of the package: never copied to the build folder.
_NOT_SOURCES = {".git", ".venv", "data", "outputs", "tests", "benchmarks"}


def run(command: list[str | Path], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "T2T_DATA_DIR")}
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, (f"{' '.join(map(str, command))} exited "
                                    f"{result.returncode}:\n{result.stdout[-2000:]}\n"
                                    f"{result.stderr[-3000:]}")
    return result


def copy_sources(destination: Path) -> Path:
    """The checkout without what is not packaged: setuptools builds in the source folder
    (build/, *.egg-info), which must not be the checkout others are working in."""

    def ignore(folder: str, names: list[str]) -> list[str]:
        skip = {"__pycache__", "build", "dist"} | (_NOT_SOURCES if Path(folder) == REPO else set())
        return [n for n in names if n in skip or n.endswith((".egg-info", "_cache", ".pyc"))]

    return Path(shutil.copytree(REPO, destination, ignore=ignore))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("packaging")
    source = copy_sources(folder / "source")
    run([sys.executable, "-m", "pip", "wheel", "--no-index", "--no-deps",
         "--no-build-isolation", "-q", "-w", folder / "wheels", source], cwd=folder)
    (built,) = (folder / "wheels").glob("t2t-*.whl")
    return built


def package_files() -> set[str]:
    """What the wheel must hold: every module of the packages and every file of the configs."""
    files = {p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    files |= {p for folder in ("t2t", "problems") for p in (REPO / folder / "configs").rglob("*")
              if p.is_file()}
    return {p.relative_to(REPO).as_posix() for p in files if "__pycache__" not in p.parts}


def test_wheel_holds_modules_configs_and_commands(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    configs = {n for n in names if "/configs/" in n and n.endswith(".yaml")}
    assert {"t2t/configs/train.yaml", "t2t/configs/trainer/cpu.yaml",
            "problems/configs/experiment/quickstart.yaml"} <= configs
    missing = sorted(package_files() - names)
    assert not missing, f"not in the wheel (pyproject.toml's package data?): {missing}"
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/"))]
    for command in COMMANDS:
        assert f"{command} = t2t.cli." in scripts


def make_venv(folder: Path) -> Path:
    """A virtual environment that sees this one's packages (torch and the rest: nothing is
    downloaded) behind its own site-packages, where the wheel goes."""
    run([sys.executable, "-m", "venv", "--system-site-packages", folder], cwd=folder.parent)
    if sys.prefix != sys.base_prefix:
        # These tests run in a virtual environment themselves, whose packages
        # --system-site-packages does not reach (it means the base interpreter's): append them.
        (site,) = (folder / "lib").glob("python*/site-packages")
        outer = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
        (site / "_outer_environment.pth").write_text("".join(f"{p}\n" for p in outer))
    return folder


def test_wheel_installed_in_a_venv_runs_outside_the_checkout(wheel, tmp_path):
    venv = make_venv(tmp_path / "venv")
    bin_dir = venv / "bin"
    run([bin_dir / "pip", "install", "--no-index", "--no-deps", "--force-reinstall", "-q",
         wheel], cwd=tmp_path)
    work = tmp_path / "work"  # outside the checkout: the checkout's packages are not importable
    work.mkdir()

    # This environment may hold an editable install of the checkout (a finder appended to
    # sys.meta_path, after the path-based one): the venv's site-packages comes first.
    imported = run([bin_dir / "python", "-c",
                    "import t2t, modalities, problems, t2t.cli.train\n"
                    "for m in (t2t, modalities, problems): print(m.__file__)"], cwd=work)
    site = next((venv / "lib").glob("python*/site-packages")).resolve()
    for path in imported.stdout.split():
        assert Path(path).resolve().is_relative_to(site), f"imported from {path}, not the venv"

    listed = run([bin_dir / "t2t-problems"], cwd=work)
    assert "algorithmic_reverse" in listed.stdout and "morse_code" in listed.stdout

    run([bin_dir / "t2t-train", "problem=algorithmic_reverse", "model=tiny",
         "trainer.max_steps=3", "trainer.val_check_interval=3", "problem.train_size=200",
         "problem.eval_size=20", "data.num_workers=0", "eval.decode_batches=1",
         "trainer.enable_progress_bar=false", f"data_dir={work / 'data'}"], cwd=work)
    # Hydra records where it composed the configs from: the installed package's folder.
    (hydra_yaml,) = (work / "outputs").glob("*/.hydra/hydra.yaml")
    sources = hydra_yaml.read_text()
    assert str(site / "t2t" / "configs") in sources or str(venv) in sources, sources
    assert str(REPO) not in sources
    assert (work / "outputs" / "algorithmic_reverse-tiny" / "checkpoints" / "last.ckpt").is_file()
