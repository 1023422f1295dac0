"""tools/check_imports.py: the package has no import cycle and no private name crossing a
module boundary, and the checker catches each kind of violation (on small fake packages)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "check_imports.py"
pytestmark = pytest.mark.skipif(not TOOL.is_file(), reason="tools/ is not shipped with the wheel")


def _load_tool():
    spec = importlib.util.spec_from_file_location("check_imports", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_imports"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _package(tmp_path: Path, files: dict) -> Path:
    """A fake ``sparseprop`` package under tmp_path from {relative path: source}."""
    root = tmp_path / "sparseprop"
    for rel, source in {"__init__.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return root


def _messages(tmp_path, files):
    violations, _, _ = _load_tool().check(_package(tmp_path, files))
    return [v.message for v in violations]


def test_the_package_passes():
    result = subprocess.run([sys.executable, str(TOOL)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no cycle, no private name across modules" in result.stdout


def test_the_package_passes_strict_with_nothing_pending():
    # The benchmarks' move removed the last known violations; CI runs --strict.
    assert _load_tool().PENDING == {}
    result = subprocess.run([sys.executable, str(TOOL), "--strict"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pending" not in result.stdout


def test_clean_package_passes(tmp_path):
    assert _messages(tmp_path, {
        "a.py": "from . import _C\nfrom ._b import helper\nfrom . import _b\nx = _b.helper\n",
        "_b.py": "import os\nfrom .c import __version__\n\ndef helper():\n    pass\n",
        "c.py": "__version__ = '1'\n",
    }) == []


def test_lazy_import_cycle_is_found(tmp_path):
    messages = _messages(tmp_path, {
        "a.py": "from .b import g\n\ndef f():\n    return g()\n",
        "b.py": "def g():\n    from .a import f\n    return f\n",
    })
    assert len(messages) == 1
    assert messages[0].startswith("import cycle: sparseprop.a -> sparseprop.b")


def test_cycle_through_the_package_init_is_found(tmp_path):
    messages = _messages(tmp_path, {
        "__init__.py": "from .a import f\nVERSION = '1'\n",
        "a.py": "def f():\n    from . import VERSION\n    return VERSION\n",
    })
    assert len(messages) == 1 and "sparseprop.a -> sparseprop " in messages[0] + " "


def test_longer_cycle_in_a_subpackage_is_found(tmp_path):
    messages = _messages(tmp_path, {
        "sub/__init__.py": "",
        "sub/a.py": "from ..b import x\n",
        "b.py": "import sparseprop.c\nx = 1\n",
        "c.py": "if True:\n    from sparseprop.sub import a\n",
    })
    assert len(messages) == 1 and "sparseprop.sub.a -> sparseprop.b" in messages[0]


@pytest.mark.parametrize("source", [
    "from .b import _hidden\n",
    "from . import b\ny = b._hidden\n",
    "import sparseprop.b\ny = sparseprop.b._hidden\n",
    "def f():\n    from sparseprop.b import _hidden as h\n    return h\n",
])
def test_private_name_across_modules_is_found(tmp_path, source):
    messages = _messages(tmp_path, {"a.py": source, "b.py": "_hidden = 1\n"})
    assert messages == ["private name sparseprop.b._hidden used outside its module"]


def test_private_name_from_the_package_init_is_found(tmp_path):
    messages = _messages(tmp_path, {"__init__.py": "_secret = 1\n",
                                    "a.py": "from . import _secret\n"})
    assert messages == ["private name sparseprop._secret used outside its module"]


def test_pending_entries_must_still_occur(monkeypatch, capsys):
    tool = _load_tool()
    monkeypatch.setitem(tool.PENDING, "private sparseprop.nowhere._gone in sparseprop.a", "test")
    assert tool.main([]) == 1
    assert "no longer occurs" in capsys.readouterr().out
