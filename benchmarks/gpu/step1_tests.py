"""Step 1, on the GPU machine: the CUDA tests (tests/decoding/test_cuda.py), then the whole CPU test suite on the image's
versions (torch 2.11, transformers 5.17, ...) with the GPU hidden, in parallel workers, within the time left.

The CUDA tests compare, on the GPU: beam search (shared-prompt and standard cache; bf16 and fp32; full and
masked scoring) with Hugging Face ``generate``; ``score_catalog`` and exact ranks with teacher forcing; and run
BEAR/MSL training steps in bf16. On a machine without CUDA they skip (the dry run checks that they do).

Usage (GPU machine, after step 0):  python3 benchmarks/gpu/step1_tests.py --out $OUT [--budget-s 240]
Writes OUT/step1.json (counts per part), OUT/step1.log and the JUnit files OUT/step1_cuda.xml, OUT/step1_suite.xml.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Step, parser, run_until  # noqa: E402


def counts(junit: Path) -> dict:
    """tests, failures, errors, skipped (and the failed tests' names) from a JUnit file."""
    if not junit.is_file():
        return {"missing": True}
    root = ET.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    failed = [f"{case.get('classname')}::{case.get('name')}" for case in suite.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    return {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")} | {"failed": failed[:50]}


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__)
    p.add_argument("--budget-s", type=float, default=240.0, help="stop the suite after this many seconds in all")
    p.add_argument("--suite", default="tests", help="what to run with the GPU hidden ('none': skip)")
    p.add_argument("--workers", type=int, default=8, help="pytest-xdist workers for the suite (0: none)")
    args = p.parse_args(argv)
    step = Step("step1", args)
    py = [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider"]
    cuda_xml = step.out / "step1_cuda.xml"
    report = {"cuda": run_until(py + ["tests/decoding/test_cuda.py", f"--junitxml={cuda_xml}"], step, args.budget_s)}
    report["cuda"] |= counts(cuda_xml)
    if args.suite != "none":
        suite_xml = step.out / "step1_suite.xml"
        workers = ["-n", str(args.workers)] if args.workers else []
        step.env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU suite, on the image's library versions
        report["suite"] = run_until(py + workers + [args.suite, "--ignore=tests/decoding/test_cuda.py", f"--junitxml={suite_xml}"],
                                    step, args.budget_s)
        report["suite"] |= counts(suite_xml)
    step.write(report)
    for part, r in report.items():
        step.log(f"{part}: {r.get('tests', '?')} tests, {r.get('failures', '?')} failed, {r.get('errors', '?')} errors, "
                 f"{r.get('skipped', '?')} skipped" + (f"; stopped ({r['reason']})" if r.get("stopped") else ""))
    return report


if __name__ == "__main__":
    main()
