"""`python -m harness check`: our kernel passes every check (from its build directory, and in course mode from
its ELF; from the course-style disk image every check that can run passes, the others say why not); each
deliberately broken variant of it (a test-only patch, built into a temporary directory) fails exactly the checks
it breaks, with an explanation a student can act on, and passes the others; every check has such a variant.

The variants are built once per session from a copy of weensyos-src and of the session's build, side by side,
and each target's runs are booted once per session (`Runs` boots a workload on first use): the tests read the
shared verdicts.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from xml.etree import ElementTree

import pytest

from harness import project
from harness.api import boot_machine
from harness.front.check import checks
from harness.front.check import command as check_command
from harness.front.check.checks import CHECK_NAMES, CHECKS, Runs, Status, Verdict
from harness.front.check.target import Target, resolve
from harness.front.cli import main
from harness.machine import MachineConfig
from harness.pc.clock import ClockCosts
from harness.pc.errors import ExitCode

from .kernel_variants import VARIANTS, Variant, VariantBuilds

pytestmark = pytest.mark.cost(5)  # seconds, roughly: the session starts the costly modules first


def check_all(runs: Runs) -> dict[str, Verdict]:
    return {check.name: check.run(runs) for check in CHECKS}


def runs_of(path: Path) -> Runs:
    """The runs of a build directory or a kernel ELF (its programs: those next to it)."""
    return Runs(resolve(path, project.BuildTree(path)))


class VariantLab:
    """Each variant's verdicts, checked on first use, once per session (per test worker: a worker builds and
    checks only the variants of the tests it runs)."""

    def __init__(self, builds: VariantBuilds) -> None:
        self.builds = builds
        self.verdicts: dict[str, dict[str, Verdict]] = {}

    def directory(self, name: str) -> Path:
        return self.builds[name]

    def verdicts_of(self, name: str) -> dict[str, Verdict]:
        if name not in self.verdicts:
            self.verdicts[name] = check_all(runs_of(self.directory(name)))
        return self.verdicts[name]


@pytest.fixture(scope="session")
def variants(variant_builds: VariantBuilds) -> VariantLab:
    return VariantLab(variant_builds)


@pytest.fixture(scope="session")
def our_runs(build_tree: project.BuildTree) -> Runs:
    """Our build's runs, booted once for every test that reads them (the command line's too)."""
    return runs_of(build_tree.directory)


def test_every_check_has_a_variant_that_fails_it() -> None:
    assert {name for variant in VARIANTS for name, _ in variant.fails} == set(CHECK_NAMES)


def test_python_m_harness_check_build_passes_every_check_on_our_kernel(
        build_tree: project.BuildTree, our_runs: Runs, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The command line on our build directory: every check PASS, exit status 0 (the runs are this session's
    shared ones: the command makes its Runs through the name it imports, which gives them here)."""
    made: list[str] = []

    def shared(target: Target) -> Runs:
        made.append(target.label)
        assert target.kernel == our_runs.target.kernel and target.programs == our_runs.target.programs
        return our_runs

    monkeypatch.setattr(check_command, "Runs", shared)
    status = main(["check", str(build_tree.directory)])
    out = capsys.readouterr().out.splitlines()
    assert made == [str(build_tree.directory)]
    assert [line.split()[:2] for line in out[:-1]] == [["PASS", name] for name in CHECK_NAMES]
    assert out[-1] == f"{build_tree.directory}: {len(CHECK_NAMES)} passed, 0 failed, 0 not applicable"
    assert status == ExitCode.OK


def test_our_kernel_passes_every_check(our_runs: Runs) -> None:
    ours = check_all(our_runs)
    assert list(ours) == CHECK_NAMES
    assert {name: v.status for name, v in ours.items()} == {name: Status.PASS for name in CHECK_NAMES}, ours
    assert "ran to power-off" in ours["no-crash"].explanation
    assert "forks: each child had every user page" in ours["fork"].explanation
    assert ours["overlapping-address-spaces"].explanation.startswith(
        "the 4 processes of `allocators` (4 alive at once) each had their program's image (allocator) at its link "
        "address and their stack page at VA 0x2ff000: the same virtual addresses, backed by each process's own "
        "physical pages (18 same-address page pairs compared)")
    assert ours["virtual-page-allocation"].explanation.startswith(
        "page_alloc(0x102000), page_alloc(0x102000), page_alloc(0x2fe000) (a page it did not map, the same page "
        "again, the highest free page below the stack) each mapped a fresh zero-filled page")
    assert ours["virtual-page-allocation"].explanation.endswith("the replaced page was freed")
    assert "free page count is back to its baseline" in ours["exit-frees"].explanation
    assert "page_alloc, getsysname, pipewrite given a kernel address each returned an error" in \
        ours["confused-deputy"].explanation


@pytest.fixture(scope="session")
def course_runs(build_tree: project.BuildTree) -> Runs:
    return runs_of(build_tree.directory / "kernel-course")


def test_our_course_mode_kernel_booted_by_its_elf_passes_every_check(course_runs: Runs, our_runs: Runs) -> None:
    """The course-mode kernel takes its command line as the course's kernel does (through the multiboot
    information, read after it switched to its own page table) and starts its built-in programs. Its memory is
    its own: fewer free pages than our kernel has (how many depends on the boot data a build places after it,
    e.g. the length of its source paths in the symbol table)."""
    found = check_all(course_runs)
    assert {name: v.status for name, v in found.items()} == {name: Status.PASS for name in CHECK_NAMES}, found
    out_of_memory = next(check for check in CHECKS if check.name == "out-of-memory")

    def free_pages(verdict: Verdict) -> int:
        match = re.search(r"filled memory to the last of (\d+) free pages", verdict.explanation)
        assert match, verdict.explanation
        return int(match[1])

    assert 0 < free_pages(found["out-of-memory"]) < free_pages(out_of_memory.run(our_runs))


def test_our_course_mode_kernel_booted_from_its_disk_image_passes_or_says_why_not(
        build_tree: project.BuildTree, capsys: pytest.CaptureFixture[str]) -> None:
    """Booted course-style from its disk image (the loader and the kernel alone: no command line), the
    course-mode kernel runs only the program compiled into it: no-crash checks that run, every other check is
    N/A, saying so, and the exit status says that not everything passed."""
    image = build_tree.directory / "weensyos-course.img"
    status = main(["check", str(image)])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("PASS no-crash ") and "the program compiled into the image's kernel ran to " \
        "power-off" in out[0]
    for name, line in zip(CHECK_NAMES[1:], out[1:-1], strict=True):
        program = {"confused-deputy": "hello", "overlapping-address-spaces": "allocators",
                   "virtual-page-allocation": "allocators", "out-of-memory": "allocators"}.get(name, "forkexit")
        assert line.split()[:2] == ["N/A", name] and line.endswith(
            f"not applicable: it starts `{program}` itself, and this disk image boots course-style, with no "
            f"command line: its kernel runs only the program compiled into it; check its kernel ELF, which the "
            f"harness boots with a command line"), line
    assert out[-1] == f"{image}: 1 passed, 0 failed, {len(CHECK_NAMES) - 1} not applicable"
    assert status == ExitCode.CHECK_NOT_APPLICABLE


def test_exit_frees_does_not_take_a_later_process_given_the_first_ones_pid_for_it(
        build_tree: project.BuildTree, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pids are reused. With a slow enough CPU (system calls and port I/O costing about as much as in the first
    speed model, pinned here: the scenario depends on where the timer falls, which the calibrated model moves)
    forkexit's parent (pid 1) is alone only before its first fork and exits while children live; its last
    descendant is given pid 1 and is then alone too, holding one page more than the parent (the page it
    allocates). Counting that as the first process back at its baseline once failed our kernel by one page; the
    measure is instead taken once every process has exited."""
    slow = MachineConfig(costs=ClockCosts(ps_per_instruction=1_539, ns_per_syscall=3_830, ns_per_delivery=0,
                                          ns_per_port_io=1_162, boot_delay_ns=53_804_523, ns_per_mmio_byte=0,
                                          ns_per_mmio=1_162))
    monkeypatch.setattr(checks, "boot_machine", lambda kernel, command, programs: boot_machine(
        kernel, command, programs, slow))
    runs = runs_of(build_tree.directory)
    run = runs.memory()
    assert run.machine is not None and run.watcher is not None
    exits = [line for line in run.machine.log.lines() if line.startswith("process 1 (forkexit) exited")]
    assert len(exits) == 2, "the scenario needs pid 1 given again after the first process exited"
    seen = run.watcher.seen
    assert seen.first_exited is not None and seen.first_exited < seen.children
    assert [sample.cycle for sample in seen.free_samples] == [0, 0]  # none after the first process exited
    baseline = seen.free_samples[0]
    assert (baseline.pid, baseline.free, baseline.held) == (1, 384, 9)
    assert seen.end is not None and seen.end.free == baseline.free + baseline.held
    assert exits[-1].endswith(f"free pages {seen.end.free}")  # the kernel's own count agrees
    verdict = next(check for check in CHECKS if check.name == "exit-frees").run(runs)
    assert verdict.status is Status.PASS, verdict
    assert verdict.explanation == (f"after {seen.children} fork+exit cycles the free page count is back to its "
                                   f"baseline of 384 plus the 9 pages the first process held then, once every "
                                   f"process had exited")


@pytest.mark.parametrize("variant", VARIANTS, ids=[v.name for v in VARIANTS])
def test_a_broken_variant_fails_exactly_its_checks_with_the_reason(variant: Variant, variants: VariantLab) -> None:
    found = variants.verdicts_of(variant.name)
    failed = {name: v.explanation for name, v in found.items() if v.status is Status.FAIL}
    assert list(failed) == [name for name, _ in variant.fails], failed
    not_applicable = {name: v.explanation for name, v in found.items() if v.status is Status.NA}
    assert list(not_applicable) == [name for name, _ in variant.not_applicable], not_applicable
    for name, reason in variant.not_applicable:
        assert reason in not_applicable[name]
    for name, phrases in variant.fails:
        for phrase in phrases:
            assert phrase in found[name].explanation, (name, found[name].explanation)


def test_the_command_line_prints_per_check_lines_and_writes_junit_and_gradescope_results(
        variants: VariantLab, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    leaky = variants.directory("leaky-exit")
    junit, results, screens = tmp_path / "junit.xml", tmp_path / "results.json", tmp_path / "screens"
    status = main(["check", str(leaky), "--only", "exit-frees", "--only", "no-crash", "--junit", str(junit),
                   "--results", str(results), "--screens", str(screens)])
    out = capsys.readouterr().out.splitlines()
    assert status == ExitCode.CHECK_FAILED
    assert out[0].startswith("PASS no-crash ")
    assert out[1].startswith("FAIL exit-frees ") and "pages are not free" in out[1]
    assert out[2] == f"{leaky}: 1 passed, 1 failed, 0 not applicable"
    document = json.loads(results.read_text())
    assert [(t["name"], t["score"], t["max_score"]) for t in document["tests"]] == [("no-crash", 1, 1),
                                                                                   ("exit-frees", 0, 1)]
    assert document["score"] == 1 and document["tests"][1]["output"].startswith("FAIL: after ")
    suite = ElementTree.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "1" and suite.get("tests") == "2"
    failure = suite.find("testcase[@name='exit-frees']/failure")
    assert failure is not None and "pages are not free" in (failure.text or "")
    pngs = sorted(screens.iterdir())  # the failed check's screen only
    assert [path.name for path in pngs] == [f"{str(leaky).strip('/').replace('/', '_')}-exit-frees.png"]
    assert pngs[0].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.parametrize(("variant", "check"), [("stacks-apart", "overlapping-address-spaces"),
                                              ("page-alloc-keeps-old-page", "virtual-page-allocation")])
def test_a_new_check_runs_alone_with_only(variant: str, check: str, variants: VariantLab,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    directory = variants.directory(variant)
    status = main(["check", str(directory), "--only", check])
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["FAIL", check]
    assert out[0].split(None, 2)[2] == variants.verdicts_of(variant)[check].explanation  # as in the full run
    assert out[1:] == [f"{directory}: 0 passed, 1 failed, 0 not applicable"]
    assert status == ExitCode.CHECK_FAILED


def test_a_disk_image_gets_the_checks_that_need_no_chosen_program_and_na_for_the_rest(
        build_tree: project.BuildTree, capsys: pytest.CaptureFixture[str]) -> None:
    image = build_tree.directory / "weensyos.img"
    status = main(["check", str(image), "--only", "no-crash", "--only", "fork"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("PASS no-crash ") and "the image's command `hello` ran to power-off" in out[0]
    assert out[1].startswith("N/A  fork ") and out[1].endswith(
        "not applicable: it starts `forkexit` itself, and this disk image runs only the command written in it "
        "(`hello`): check the kernel ELF or the build directory")
    assert status == ExitCode.CHECK_NOT_APPLICABLE  # not everything passed: never exit 0


def test_a_kernel_without_the_program_a_check_runs_is_not_applicable_never_passed(
        build_tree: project.BuildTree, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy2(build_tree.kernel, tmp_path / "kernel")  # a directory with the kernel alone: no p-forkexit
    runs = Runs(resolve(tmp_path / "kernel", project.BuildTree(tmp_path / "none")))
    for name in ("kernel-isolation", "process-isolation", "fork", "overlapping-address-spaces",
                 "virtual-page-allocation", "exit-frees", "confused-deputy", "out-of-memory"):
        verdict = next(check for check in CHECKS if check.name == name).run(runs)
        program = {"confused-deputy": "hello", "overlapping-address-spaces": "allocator",
                   "virtual-page-allocation": "allocator", "out-of-memory": "allocator"}.get(name, "forkexit")
        assert verdict.status is Status.NA and f"program(s) {program}" in verdict.explanation, verdict


def test_a_kernel_that_does_not_speak_our_abi_is_probed_with_the_course_numbering(
        build_tree: project.BuildTree, tmp_path: Path) -> None:
    """A course kernel holds no ABI string of ours: its system calls are the course's. page_alloc is 4 in both
    course trees (as in ours), so the probe still runs; the confused-deputy probe, which needs calls the course
    trees number differently, is N/A."""
    abi = json.loads((build_tree.directory / "syscalls.json").read_text())["abi"].encode()
    data = build_tree.kernel.read_bytes()
    assert data.count(abi + b"\0") == 1
    (tmp_path / "kernel").write_bytes(data.replace(abi + b"\0", b"x" * len(abi) + b"\0"))
    runs = Runs(resolve(tmp_path / "kernel", build_tree))
    verdicts = {check.name: check.run(runs) for check in CHECKS
                if check.name in ("virtual-page-allocation", "confused-deputy")}
    assert verdicts["virtual-page-allocation"].status is Status.PASS, verdicts
    assert verdicts["confused-deputy"].status is Status.NA
    assert "the kernel's system-call table has none of page_alloc" in verdicts["confused-deputy"].explanation


def test_bad_arguments_are_one_line_and_a_usage_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(tmp_path / "nothing")]) == ExitCode.HARNESS_ERROR
    assert capsys.readouterr().err.strip() == f"harness: error: {tmp_path / 'nothing'}: no such kernel, build " \
                                              f"directory or disk image"
    with pytest.raises(SystemExit) as raised:
        main(["check", str(tmp_path), "--only", "nosuch"])
    assert raised.value.code == ExitCode.USAGE
    assert "unknown check 'nosuch'" in capsys.readouterr().err


def test_help_lists_every_check_with_its_documentation(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["check", "--help"])
    listing = capsys.readouterr().out.split("checks:\n", 1)[1]
    width = len("overlapping-address-spaces") + 2  # the longest name, and two spaces
    for check in CHECKS:
        assert f"  {check.name:<{width}}{check.doc.replace('`', '')}" in listing
    assert CHECK_NAMES == ["no-crash", "kernel-isolation", "process-isolation", "fork", "overlapping-address-spaces",
                           "virtual-page-allocation", "exit-frees", "confused-deputy", "out-of-memory"]
