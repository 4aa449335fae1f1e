"""What `pip install .` from a wheel gives (issue 11 item 13): the default configs inside the package, the license,
py.typed, every imported library declared; a working CLI from a directory without configs/."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "examples" / "routerbench_sample.csv"


def test_pyproject_declares_package_data_and_every_imported_library():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    deps = " ".join(meta["project"]["dependencies"])
    for lib in ("aiohttp", "httpx", "litellm", "trl", "peft", "bitsandbytes", "pydantic", "typer", "rich", "yaml"):
        assert re.search(rf"\b{lib}", deps) or (lib == "yaml" and "pyyaml" in deps), lib
    st = meta["tool"]["setuptools"]
    assert st["package-dir"]["xrouter_lite.configs"] == "configs" and "xrouter_lite.configs" in st["packages"]
    assert st["package-data"]["xrouter_lite.configs"] == ["*.yaml"] and "py.typed" in st["package-data"]["xrouter_lite"]
    assert (REPO / "xrouter_lite" / "py.typed").exists()
    assert "Apache License" in (REPO / "LICENSE").read_text(encoding="utf-8")
    # constraints.txt: every tested version, for 3.11+ and for 3.10
    cons = (REPO / "constraints.txt").read_text(encoding="utf-8")
    for lib in ("trl", "transformers", "peft", "bitsandbytes", "litellm"):
        assert re.search(rf"^{lib}==\S+ ; python_version >= \"3.11\"$", cons, re.M), lib
        assert re.search(rf"^{lib}==\S+ ; python_version < \"3.11\"$", cons, re.M), lib


@pytest.mark.slow  # builds a wheel and installs it with its dependencies into a fresh venv (minutes)
def test_wheel_installs_a_working_cli_with_its_configs(tmp_path):
    import shutil

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing of the source tree on the path
    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv*", "runs", "models", "build", "*.egg-info",
                                                              "__pycache__", ".pytest_cache"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels)], check=True, cwd=tmp_path, env=env)
    (whl,) = wheels.glob("xrouter_lite-*.whl")
    names = zipfile.ZipFile(whl).namelist()
    assert "xrouter_lite/configs/pool_routerbench.yaml" in names and "xrouter_lite/py.typed" in names
    assert any(n.endswith("licenses/LICENSE") for n in names)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "-c", str(REPO / "constraints.txt"), str(whl)], check=True,
                   cwd=tmp_path, timeout=1800, env=env)
    work = tmp_path / "elsewhere"  # no configs/ here, and not the source tree
    work.mkdir()
    cli = venv / "bin" / "xrouter-lite"
    res = subprocess.run([str(cli), "--help"], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "pairs" in res.stdout, res.stderr
    res = subprocess.run([str(cli), "import", "routerbench", str(SAMPLE), "--out", "c.jsonl", "--limit-per-file", "5"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert (work / "c.jsonl").read_text().count("\n") == 5 * 11
    res = subprocess.run([str(py), "-c", "import xrouter_lite, pathlib; print(pathlib.Path(xrouter_lite.__file__).parent)"],
                         cwd=work, env=env, capture_output=True, text=True)
    assert str(venv) in res.stdout  # the installed copy ran, not the source tree
