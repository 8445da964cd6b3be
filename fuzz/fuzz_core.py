"""Fuzz the core with atheris (libFuzzer): the harness is tests/fuzz_harness.py.

    python fuzz/fuzz_core.py fuzz/corpus -max_total_time=300     # five minutes
    python fuzz/fuzz_core.py -runs=2000 -seed=1                  # a smoke run

Every libFuzzer flag works. A finding (a failed invariant, an unexpected exception, or a
crash of the core) stops the run and is saved as crash-<sha1>; replay it with
`python fuzz/fuzz_core.py crash-<sha1>`. The Python layers are instrumented for coverage;
the Cython core is not (that needs a clang build with -fsanitize=fuzzer-no-link), so
coverage guides the search through the wrappers and the harness's choices. Every 20 s,
and at the end of a -runs run, the counts of calls by kind and outcome are printed.
"""

import os
import sys
import time

import atheris

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
with atheris.instrument_imports(include=["allones", "fuzz_harness"]):
    import fuzz_harness

REPORT_EVERY = 20.0
_last_report = time.monotonic()


def report() -> None:
    counts = fuzz_harness.COUNTS
    print(f"#allones {counts['inputs']} inputs, {counts['calls']} calls", file=sys.stderr)
    for key in sorted(k for k in counts if ":" in k):
        print(f"#allones {counts[key]:10d}  {key}", file=sys.stderr)


def test_one_input(data: bytes) -> None:
    global _last_report
    fuzz_harness.run_one(data)
    if time.monotonic() - _last_report > REPORT_EVERY:
        report()
        _last_report = time.monotonic()


def main() -> None:
    runs = next((int(a.split("=", 1)[1]) for a in sys.argv if a.startswith("-runs=")), None)
    if runs is not None:   # libFuzzer exits without returning: report at the last input
        def last_reports(data, _seen=[0]):
            test_one_input(data)
            _seen[0] += 1
            if _seen[0] == runs:
                report()
        atheris.Setup(sys.argv, last_reports)
    else:
        atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
