"""The benchmark's own arithmetic and runs (its figures are measured by `python -m harness bench`, never here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import project
from harness.front import bench
from harness.front.cli import main


def test_rates_subtract_the_baseline_run_made_just_before() -> None:
    # 1,000 units in runs of 3 s and 5 s after baselines of 1 s and 1 s: 500 and 250 per second.
    assert bench._rates(1000, [3.0, 5.0], [1.0, 1.0]) == [500.0, 250.0]
    assert bench._rates(1000, [1.0], [2.0]) == []  # noise larger than the work: no rate rather than a wrong one


def test_a_round_run_stops_at_the_kernels_loop_marker(build_tree: project.BuildTree, tmp_path: Path) -> None:
    image = bench._make_image(build_tree.directory, "loop yielder", tmp_path / "loop.img").read_bytes()
    elapsed, machine = bench._harness_disk_run(image, False, build_tree, rounds=2)
    log = machine.log.text()
    assert elapsed > 0
    assert "weensyos: loop 2 done" in log and "weensyos: loop 3 done" not in log
    assert log.count("process 1 (yielder) exited with status 0") == 2  # one exit per round
    assert machine.syscall_count >= 20_000


def test_the_table_shows_medians_and_ratios_oriented_so_that_above_one_is_better() -> None:
    faster = bench.Row("yield loop", "syscalls/s", harness=[90.0, 110.0, 100.0], qemu=[50.0])
    slower_boot = bench.Row("boot", "s", harness=[0.4], qemu=[0.2], higher_is_better=False)
    text = bench.table({"rows": [faster.summary(), slower_boot.summary()]})
    assert faster.ratio == 2.0 and slower_boot.ratio == 0.5
    lines = text.splitlines()
    assert "yield loop" in lines[1] and "2.00" in lines[1] and "90-110" in lines[1]
    assert "boot" in lines[2] and "0.50" in lines[2]


def test_saved_results_are_shown_again_as_markdown_without_measuring(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:

    row = bench.Row("pipe", "messages/s", harness=[3000.0, 3400.0], qemu=[1600.0])
    saved = tmp_path / "results.json"
    saved.write_text(json.dumps({"machine": {"cpu model": "Test CPU", "cpus": 2, "python": "3.11", "hot paths":
                                             "native"}, "repeat": 2, "rows": [row.summary()]}))
    assert main(["bench", "--from-json", str(saved), "--markdown"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| workload | unit | harness | QEMU | harness/QEMU")
    assert out[2] == "| pipe | messages/s | 3,200 | 1,600 | 2.00 | 3,000-3,400 |"
    assert out[3] == "Test CPU, 2 CPUs, Python 3.11; hot paths: native; median of 2 runs"
    assert main(["bench", "--from-json", str(tmp_path / "missing.json")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("harness: error: cannot read benchmark results from")


def test_the_plain_table_has_no_exponent_and_every_column_aligned() -> None:
    rows = [bench.Row("yield loop", "syscalls/s", harness=[87_823.0, 121_573.0], qemu=[104_941.0]),
            bench.Row("compute: Unicorn alone, without the block clock (reference)", "Minsn/s",
                      harness=[984.0, 1634.0], qemu=[2645.0]),
            bench.Row("compute: tracing on / off", "ratio", harness=[0.666, 1.11])]
    lines = bench.table({"rows": [row.summary() for row in rows]}).splitlines()
    assert not any("e+" in line for line in lines)
    assert "104,698" in lines[1] and "87,823-121,573" in lines[1] and "1,309" in lines[2]
    header = lines[0]
    unit_at = header.index("unit")  # left-aligned columns start together ...
    assert all(line[unit_at - 2:unit_at] == "  " and line[unit_at] != " " for line in lines)
    for column in ("harness", "QEMU", "harness/QEMU"):  # ... right-aligned ones end together
        end = header.index(f" {column} ") + 1 + len(column)
        assert all(line[end - 1] != " " and line[end:end + 2] == "  " for line in lines), (column, lines)


def test_one_run_is_one_run() -> None:
    assert bench._describe_machine({"machine": {}, "repeat": 1}).endswith("median of 1 run")
