"""The verdicts as a student reads them (one line a check), as JUnit XML and as Gradescope's results.json."""

from __future__ import annotations

import json
import re
from pathlib import Path
from xml.etree import ElementTree

from ...pc.errors import HarnessError
from .checks import Status, Verdict


def text_lines(label: str, verdicts: list[Verdict]) -> list[str]:
    width = max((len(v.name) for v in verdicts), default=0)
    lines = [f"{v.status.value:<4} {v.name:<{width}}  {v.explanation}" for v in verdicts]
    passed = sum(v.status is Status.PASS for v in verdicts)
    failed = sum(v.status is Status.FAIL for v in verdicts)
    na = sum(v.status is Status.NA for v in verdicts)
    lines.append(f"{label}: {passed} passed, {failed} failed, {na} not applicable")
    return lines


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as e:
        raise HarnessError(f"{path}: cannot write it ({e.strerror})") from None


def save_failed_screens(directory: Path, results: list[tuple[str, list[Verdict]]]) -> list[Path]:
    """The screen of each failed check's run, as the run ended, as DIRECTORY/TARGET-CHECK.png."""
    from ..screenshot import save_screen  # the PNG encoder, loaded only when asked for

    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HarnessError(f"{directory}: cannot make the directory ({e.strerror})") from None
    saved = []
    for label, verdicts in results:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_.") or "kernel"
        for v in verdicts:
            if v.status is Status.FAIL and v.machine is not None:
                path = directory / f"{stem}-{v.name}.png"
                save_screen(path, v.machine.console.cells(), v.machine.console.cursor())
                saved.append(path)
    return saved


def write_junit(path: Path, results: list[tuple[str, list[Verdict]]]) -> None:
    """One test suite per target, one test case per check: a FAIL is a failure, an N/A is skipped."""
    suites = ElementTree.Element("testsuites")
    for label, verdicts in results:
        suite = ElementTree.SubElement(suites, "testsuite", name=label, tests=str(len(verdicts)),
                                       failures=str(sum(v.status is Status.FAIL for v in verdicts)),
                                       skipped=str(sum(v.status is Status.NA for v in verdicts)))
        for v in verdicts:
            case = ElementTree.SubElement(suite, "testcase", name=v.name, classname=label)
            if v.status is Status.FAIL:
                ElementTree.SubElement(case, "failure", message=v.explanation).text = v.explanation
            elif v.status is Status.NA:
                ElementTree.SubElement(case, "skipped", message=v.explanation)
            else:
                ElementTree.SubElement(case, "system-out").text = v.explanation
    _write(path, ElementTree.tostring(suites, encoding="unicode", xml_declaration=True) + "\n")


def write_results(path: Path, results: list[tuple[str, list[Verdict]]]) -> None:
    _write(path, json.dumps(results_document(results), indent=2) + "\n")


def results_document(results: list[tuple[str, list[Verdict]]]) -> dict[str, object]:
    """Gradescope's results.json: a PASS scores 1 of 1, a FAIL 0 of 1; an N/A scores 0 of 0 (it is not held
    against the student, nor counted for them), its output says why."""
    tests = []
    for label, verdicts in results:
        prefix = f"{label}: " if len(results) > 1 else ""
        for v in verdicts:
            maximum = 0 if v.status is Status.NA else 1
            tests.append({"name": prefix + v.name, "score": 1 if v.status is Status.PASS else 0,
                          "max_score": maximum, "status": "passed" if v.status is Status.PASS else "failed",
                          "output": f"{v.status.value}: {v.explanation}"})
    return {"score": sum(t["score"] for t in tests), "max_score": sum(t["max_score"] for t in tests),
            "tests": tests}
