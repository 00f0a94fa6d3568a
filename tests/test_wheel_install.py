"""``pip install .`` (not editable) gives a working app: the wheel carries resources/ and the plugins.

The wheel is built from a copy of the checkout (so concurrent test runs never share build/), installed
without dependencies into a fresh virtual environment that sees this environment's packages (torch is
not downloaded again) but not this checkout nor its editable install, and the demo is trained from a
folder outside the checkout. Skips only where a wheel cannot be built here (no pip or setuptools).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What a wheel is built from: the package sources, the plugins, the data files pyproject names.
SOURCES = ("pyproject.toml", "README.md", "lmstudio_app", "plugins", "resources", "docs/plugins.md", "packaging")
DEMO_CONFIG = """\
[data]
files = []  # the demo corpus

[tokenizer]
plugin = "char"

[model]
plugin = "gpt"
n_layer = 1
n_head = 2
n_embd = 16
context_length = 16

[train]
device = "cpu"
dtype = "float32"
batch_size = 4
max_steps = 50
eval_interval = 3
eval_batches = 1
checkpoint_interval = 0
"""


def _copy_sources(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
        src, dst = ROOT / name, dest / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=ignore)
        else:
            shutil.copy2(src, dst)


def _build_wheel(tmp: Path) -> Path:
    if importlib.util.find_spec("pip") is None or importlib.util.find_spec("setuptools") is None:
        pytest.skip("building a wheel needs pip and setuptools in the test environment")
    src, out = tmp / "src", tmp / "wheels"
    _copy_sources(src)
    # "./src", not "src": a bare name is a requirement pip would look up on an index.
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--no-index", "-q", "-w", str(out), f".{os.sep}src"],
                          cwd=tmp, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"pip wheel failed:\n{done.stdout}\n{done.stderr}"
    wheels = sorted(out.glob("lmstudio_app-*.whl"))
    assert len(wheels) == 1, f"expected one wheel, found {wheels}"
    return wheels[0]


def _dependencies_view(tmp: Path) -> Path:
    """A folder of links to this environment's packages, less lmstudio itself and its editable hook."""
    view = tmp / "deps"
    view.mkdir()
    for folder in {Path(p) for p in [*site.getsitepackages(), site.getusersitepackages()] if Path(p).is_dir()}:
        for entry in folder.iterdir():
            name = entry.name.lower()
            if name.startswith(("lmstudio", "__editable__", "_lmstudio")) or name.endswith(".pth"):
                continue
            if not (view / entry.name).exists():
                (view / entry.name).symlink_to(entry)
    return view


def _fresh_venv(tmp: Path) -> Path:
    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt").create(env_dir)
    python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # Appended after the venv's own site-packages, so the wheel's lmstudio_app is the one imported.
    (Path(purelib) / "_test_dependencies.pth").write_text(f"{_dependencies_view(tmp)}\n", encoding="utf-8")
    return python


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the fresh environment's python, its ``lmstudio`` script) with the wheel installed."""
    tmp = tmp_path_factory.mktemp("wheel")
    wheel = _build_wheel(tmp)
    python = _fresh_venv(tmp)
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                           "--no-index", "-q", str(wheel)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"pip install failed:\n{done.stdout}\n{done.stderr}"
    script = python.parent / ("lmstudio.exe" if os.name == "nt" else "lmstudio")
    assert script.exists(), "the wheel installed no lmstudio console script"
    return python, script


def _outside_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LMSTUDIO_PLUGINS")}
    env["LMSTUDIO_HOME"] = str(tmp_path / "home")
    return env


def test_the_installed_package_is_not_the_checkout(installed, tmp_path):
    python, _ = installed
    probe = ("import json, lmstudio_app, lmstudio_builtins, lmstudio_app.resources as r;"
             "print(json.dumps([lmstudio_app.__file__, lmstudio_builtins.__file__, str(r.demo_corpus_path()),"
             " r.list_presets()]))")
    done = subprocess.run([str(python), "-c", probe], cwd=tmp_path, env=_outside_env(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    app_file, builtins_file, demo, presets = json.loads(done.stdout)
    for path in (app_file, builtins_file, demo):
        assert not Path(path).resolve().is_relative_to(ROOT), f"{path} comes from the checkout"
    assert Path(demo).is_file() and Path(demo).stat().st_size > 100_000
    assert {"default", "fast-cpu"} <= set(presets)
    share = python.parent.parent / "share"  # the environment's prefix: ~/.local for pip install --user
    assert "Exec=lmstudio" in (share / "applications" / "lmstudio.desktop").read_text(encoding="utf-8").splitlines()
    assert (share / "icons" / "hicolor" / "scalable" / "apps" / "lmstudio.svg").is_file()
    assert (share / "lmstudio_app" / "resources" / "lmstudio.png").is_file()  # the window icon


def test_the_installed_app_trains_the_demo(installed, tmp_path):
    _, script = installed
    (tmp_path / "demo.toml").write_text(DEMO_CONFIG, encoding="utf-8")
    run_dir = tmp_path / "run"
    done = subprocess.run([str(script), "train", "demo.toml", "--set", "train.max_steps=3", "--out", str(run_dir)],
                          cwd=tmp_path, env=_outside_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
             if line.strip()]
    assert [row["step"] for row in steps if "train_loss" in row][-1] == 3
    assert (run_dir / "tokenizer.json").is_file()


def test_the_installed_plugins_are_found(installed, tmp_path):
    _, script = installed
    done = subprocess.run([str(script), "plugins"], cwd=tmp_path, env=_outside_env(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "gpt" in done.stdout and "char" in done.stdout and "demo" in done.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_install_desktop_writes_the_entry_and_the_icons(tmp_path):
    data = tmp_path / "share"
    done = subprocess.run(["make", "-s", "install-desktop", f"XDG_DATA_HOME={data}", "EXEC=/opt/x/bin/lmstudio"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    entry = (data / "applications" / "lmstudio.desktop").read_text(encoding="utf-8")
    lines = entry.splitlines()
    assert lines[0] == "[Desktop Entry]" and "Exec=/opt/x/bin/lmstudio" in lines and "Icon=lmstudio" in lines
    assert "TryExec=/opt/x/bin/lmstudio" in lines
    svg = data / "icons" / "hicolor" / "scalable" / "apps" / "lmstudio.svg"
    png = data / "icons" / "hicolor" / "256x256" / "apps" / "lmstudio.png"
    assert svg.read_text(encoding="utf-8").lstrip().startswith("<svg")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
