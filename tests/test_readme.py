"""The README's code that prints something prints what the README says; its pytest-plugin
example is a working benchmark (every block runs as pasted: test_docs_run.py)."""

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def _printed(block: str) -> list[str]:
    """The output a block shows: its last lines, each a `# ` comment."""
    lines = block.splitlines()
    n = next((i for i in range(len(lines), 0, -1) if not lines[i - 1].startswith("# ")), 0)
    return [line[2:] for line in lines[n:]]


def test_readme_blocks_print_what_they_say():
    """The scan example and the Unicorn example: their output, line for line."""
    shown = [b for b in python_blocks() if _printed(b)]
    assert len(shown) >= 2 and any("EcamWindow" in b for b in shown)
    for block in shown:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block, "README.md", "exec"), {})
        assert out.getvalue().splitlines() == _printed(block)


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
