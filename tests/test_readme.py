"""The README's code that prints something prints what the README says; its pytest-plugin
example is a working benchmark (every block runs as pasted: test_docs_run.py)."""

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_scan_example_prints_what_it_says():
    block = next(b for b in python_blocks() if "scan = " in b)
    code = "\n".join(line for line in block.splitlines() if not line.startswith("# "))
    expected = [line[2:] for line in block.splitlines() if line.startswith("# ")]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    assert out.getvalue().splitlines() == expected


pytest_plugins = ["pytester"]


def test_readme_plugin_example_runs_as_a_users_benchmark(pytester, monkeypatch):
    """The pytest-plugin example is a working user test (plugin loaded explicitly, as an
    installed package loads it through its entry point)."""
    monkeypatch.setenv("PYTHONPATH", str(README.parent))
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    block = next(b for b in python_blocks() if "allones_vm_factory" in b)
    pytester.makepyfile(test_user=block)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "allones.pytest_plugin",
                                           "-p", "pytest_benchmark.plugin", "--benchmark-disable")
    result.assert_outcomes(passed=1)
