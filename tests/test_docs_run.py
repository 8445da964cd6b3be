"""Every command and code block of the README and docs/ runs as pasted, in a fresh directory
laid out as a clone (tests/, examples/, ... but no allones/ source: the installed package
is imported), and the paths the docs name exist. What is not run is in NOT_RUN, with why;
a command found in no table fails, so a new one cannot slip by untested."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(ROOT.glob("examples/*/README.md"))]
COMMAND = re.compile(r"([A-Z_]+=\S+ )*(allones|python|mkdir|tools/memcheck) ")   # a block's first line
CLONE = ("tests", "examples", "benchmarks", "fuzz", "tools")     # what a command may name

#: commands (or the part of an `a && b` chain) the docs give that this test does not run
NOT_RUN = {
    "python -m pip install .": ".ci/run installs the package before the tests (the test runs the rest)",
    "python -m pip install -e '.[test]'": ".ci/run runs exactly this before the tests",
    "python -m pytest tests benchmarks --benchmark-disable": "the suite this test is part of (.ci/run)",
    "python -m pytest tests/reliability/test_fuzz.py": "part of the suite this test is part of",
    "ALLONES_FUZZ_EXAMPLES=20000 python -m pytest tests/reliability/test_fuzz.py":
        "the same fuzz test, 20,000 examples (minutes); the suite runs its default",
    "python -m pytest benchmarks/test_unicorn_guest.py --benchmark-only --benchmark-group-by=group":
        "a timed benchmark run (minutes); the suite runs every benchmark once, --benchmark-disable",
    "python -m pytest benchmarks --benchmark-only --benchmark-group-by=group --benchmark-columns=min,median,"
    "rounds --benchmark-sort=name": "the timed benchmark run (tens of minutes); the suite runs each once",
    "allones sweep examples/sweep.toml --scheduler tcp://HOST:8786":
        "HOST is the reader's Dask scheduler; tests/experiments/test_sweep.py runs the sweep on a local "
        "Dask cluster",
    "mkdir -p fuzz/corpus": "the first half of the 5-minute fuzzing run below",
    "python fuzz/fuzz_core.py fuzz/corpus -max_total_time=300 -max_len=4096":
        "5 minutes of fuzzing by design; tests/reliability/test_fuzz.py smoke-runs the same driver",
    "ALLONES_STRESS_SECONDS=300 python -m pytest -s tests/reliability/test_concurrency.py":
        "5 minutes of the stress test by design; the suite runs it for seconds",
    "tools/memcheck asan": "rebuilds the core under ASAN/UBSAN and reruns the suite (tens of minutes)",
    "tools/memcheck valgrind": "the core's tests under valgrind (tens of minutes)",
}
#: fenced blocks that are not code of ours: (file name, first line)
NOT_CODE = {
    ("costmodel.md", "/* Number of pages ksmd should scan in one batch */"): "a quotation of mm/ksm.c",
}


def _blocks(path: Path):
    """(language, text, line) of every fenced block, and ("indented", text, line) of every
    indented block (4 spaces after a blank line) outside them."""
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if fence:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            yield fence.group(1) or "text", "\n".join(lines[i + 1:end]) + "\n", i + 1
            i = end + 1
        elif lines[i].startswith("    ") and (i == 0 or not lines[i - 1].strip()):
            end = i
            while end < len(lines) and (lines[end].startswith("    ") or not lines[end].strip()):
                end += 1
            yield "indented", "\n".join(line[4:] for line in lines[i:end]).strip() + "\n", i + 1
            i = end
        else:
            i += 1


def _commands(text: str) -> list[str]:
    """The shell commands of a block whose first line is one (every line then is one):
    continuation lines joined, comments dropped; [] for a block of something else."""
    joined = re.sub(r"\\\n\s*", "", text)
    lines = [re.sub(r"\s+#.*$", "", line).strip() for line in joined.splitlines()]
    lines = [line for line in lines if line]
    return lines if lines and COMMAND.match(lines[0]) else []


def _inventory():
    """Every piece of the docs to run: (doc, line, kind, code)."""
    items = []
    for doc in DOCS:
        for lang, text, line in _blocks(doc):
            if lang == "text" and not _commands(text):
                continue                            # output shown, not a command
            if lang in ("indented", "text", "sh", "bash", "console"):
                parts = [p.strip() for command in _commands(text) for p in command.split("&&")]
                if parts:         # a block is one session: its commands in order, in one place
                    items.append((doc, line, "shell", "\n".join(parts)))
            elif (doc.name, text.splitlines()[0]) in NOT_CODE:
                continue
            else:
                items.append((doc, line, lang, text))
    return items


INVENTORY = _inventory()


def _id(item):
    doc, line, kind, code = item
    return f"{doc.relative_to(ROOT)}:{line}:{kind}:{code.splitlines()[0][:40]}"


@pytest.fixture
def clone(tmp_path):
    """A fresh directory laid out as a clone, without the package's source."""
    for name in CLONE:
        (tmp_path / name).symlink_to(ROOT / name)
    return tmp_path


def test_every_command_is_run_or_says_why_not():
    kinds = {"shell", "python", "toml", "cython"}
    assert {kind for *_, kind, _ in INVENTORY} <= kinds, "a block of a kind this test cannot run"
    shell = {command for *_, kind, code in INVENTORY if kind == "shell" for command in code.splitlines()}
    assert set(NOT_RUN) <= shell, f"NOT_RUN names commands no doc has: {set(NOT_RUN) - shell}"
    assert len(shell - set(NOT_RUN)) >= 10


def _to_run(code: str) -> str:
    return "\n".join(command for command in code.splitlines() if command not in NOT_RUN)


@pytest.mark.parametrize("item", [i for i in INVENTORY if i[2] == "shell" and _to_run(i[3])], ids=_id)
def test_shell_commands_run_as_pasted(item, clone):
    """A block's commands, in order, in one shell (`set -e`: the first failure fails)."""
    doc, line, _, code = item
    command = "set -e\n" + _to_run(code)
    cwd = clone
    if doc.parent.parent.name == "examples":        # a README of an example: in a copy of it
        cwd = clone / "example"
        shutil.copytree(doc.parent, cwd, ignore=shutil.ignore_patterns("build", "*.so", "*.c"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    proc = subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600, executable="/bin/bash")
    assert proc.returncode == 0, f"{doc.name}:{line}: {command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def _python_blocks():
    return [i for i in INVENTORY if i[2] == "python"]


@pytest.mark.parametrize("item", [i for i in _python_blocks() if "# setup.py" not in i[3]
                                  and "allones_vm_factory" not in i[3]], ids=_id)
def test_python_block_runs_as_pasted(item, clone):
    """In a subprocess from the fresh directory: no name left undefined, nothing missing."""
    doc, line, _, code = item
    proc = subprocess.run([sys.executable, "-c", code], cwd=clone, capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, f"{doc.name}:{line}\n{proc.stderr[-3000:]}"


def test_the_embedding_guides_setup_and_cython_build_and_run(tmp_path):
    """docs/embedding.md: its setup.py builds its .pyx (the cython block) against the
    installed package, and the function it defines translates as VM.gfn_to_hva does."""
    setup = next(code for doc, _, kind, code in INVENTORY if doc.name == "embedding.md" and kind == "python"
                 and "# setup.py" in code)
    pyx = next(code for doc, _, kind, code in INVENTORY if doc.name == "embedding.md" and kind == "cython")
    (tmp_path / "setup.py").write_text(setup)
    (tmp_path / "translate.pyx").write_text(pyx)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check = ("import numpy as np, allones, translate\n"
             "h = allones.Host(); vm = allones.VM(h); m = h.mmap(1 << 16)\n"
             "vm.set_user_memory_region(0, 0, 0, m.size, m.hva)\n"
             "g = np.arange(0x20, dtype=np.uint64); out = np.empty(0x20, dtype=np.uint64)\n"
             "translate.hvas(vm, g, out)\n"
             "assert [int(x) for x in out[:16]] == [vm.gfn_to_hva(int(x)) for x in g[:16]]\n"
             "assert int(out[0x10]) == allones.constants.KVM_HVA_ERR_BAD\n")
    proc = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("item", [i for i in INVENTORY if i[2] == "toml"], ids=_id)
def test_toml_block_loads(item, tmp_path):
    """A [costs] table loads as a CostModel; a [[sweep.scans]] table, added to
    examples/sweep.toml where its relative paths start, loads as a sweep config."""
    from allones.experiments.costmodel import CostModel
    from allones.experiments.sweep import expand, load_config
    doc, line, _, code = item
    if code.lstrip().startswith("[costs]"):
        (tmp_path / "costs.toml").write_text(code)
        assert CostModel.from_toml(tmp_path / "costs.toml") != CostModel.default()
        return
    assert "[[sweep.scans]]" in code, f"{doc.name}:{line}: a TOML block this test does not know"
    (tmp_path / "examples").mkdir()
    (tmp_path / "tests").symlink_to(ROOT / "tests")
    config = tmp_path / "examples" / "sweep.toml"
    config.write_text((ROOT / "examples" / "sweep.toml").read_text() + "\n" + code)
    assert len(expand(load_config(config))) > 0


PATH_RE = re.compile(r"(?<![\w./-])((?:docs|examples|tests|benchmarks|allones|fuzz|tools)/[\w./*-]*\w)")
#: paths the docs name that are not in the repository, and why
ELSEWHERE = {"fuzz/corpus": "made by the fuzzing command (mkdir -p)",
             "tools/testing/": "the kernel's tree (torvalds/linux), cited"}


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_every_path_a_doc_names_exists(doc):
    """Paths in backticks, links and commands (repository-relative, or relative to an
    example's README) exist: a renamed file is caught here, not by a reader."""
    text = doc.read_text()
    missing = []
    for path in set(PATH_RE.findall(text)):
        path = path.rstrip(".")
        if any(path.startswith(other) for other in ELSEWHERE):
            continue
        if "*" in path:          # a glob: something must match it
            if not any(any(base.glob(path)) for base in (ROOT, doc.parent)):
                missing.append(path)
            continue
        if not any((base / path).exists() or (base / path).parent.joinpath(Path(path).name).exists()
                   for base in (ROOT, doc.parent)):
            missing.append(path)
    for link in re.findall(r"\]\(([^)#]+)\)", text):
        if not link.startswith("http") and not (doc.parent / link).exists():
            missing.append(link)
    assert missing == []
