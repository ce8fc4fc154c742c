"""bench/gpu.py's guards: the script runs once on a lent GPU, so a hung or failing part
must cost only itself. These check the machinery on CPU in a few seconds; the figures
themselves come from `python bench/gpu.py` (`--dry-run` here)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def gpu():
    spec = importlib.util.spec_from_file_location(
        "bench_gpu", os.path.join(ROOT, "bench", "gpu.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_command_past_its_guard_is_killed_with_its_children(gpu, tmp_path):
    report = gpu.Report(str(tmp_path), dry_run=True)
    pid_file = tmp_path / "grandchild.pid"
    # A shell that starts a grandchild (as torchrun starts workers) and waits on it.
    script = f"sleep 60 & echo $! > {pid_file}; echo started; wait"
    t0 = time.perf_counter()
    result = gpu.run_cmd(report, ["sh", "-c", script], timeout=1.5)
    assert time.perf_counter() - t0 < 15
    assert result["timed_out"] and result["rc"] != 0
    assert result["lines"] == ["started"]  # output before the kill is kept
    grandchild = int(pid_file.read_text())
    for _ in range(50):  # the whole process group got the signal
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the grandchild outlived the guard")
    assert "timed out after 2s" in (tmp_path / "log.txt").read_text()


def test_a_failing_section_is_logged_and_the_next_one_still_runs(gpu, tmp_path, monkeypatch):
    def broken(report, ctx, guard):
        report.section("first")["partial"] = 1
        raise RuntimeError("cuDNN exploded")

    def fine(report, ctx, guard):
        report.section("second")["value"] = 42

    monkeypatch.setattr(gpu, "SECTIONS", [("first", broken, 30, 1), ("second", fine, 30, 1)])
    monkeypatch.setattr(sys, "argv", ["gpu.py", "--dry-run", "--out", str(tmp_path)])
    gpu.main()
    results = json.loads((tmp_path / "results.json").read_text())["sections"]
    assert "RuntimeError: cuDNN exploded" in results["first"]["error"]
    assert results["first"]["partial"] == 1  # what it recorded before failing is kept
    assert results["second"]["value"] == 42
    assert "sections with a failure: first" in (tmp_path / "results.md").read_text()


def test_a_section_the_budget_cannot_fit_is_skipped_not_started(gpu, tmp_path, monkeypatch):
    started = []

    def section(report, ctx, guard):
        started.append(guard)

    sections = [("a", section, 100, 40), ("b", section, 100, 40)]
    monkeypatch.setattr(gpu, "SECTIONS", sections)
    # dry run: least needs are a quarter (10 s each); 15 s leaves "a" only 5 s after "b"'s
    monkeypatch.setattr(
        sys, "argv", ["gpu.py", "--dry-run", "--budget", "15", "--out", str(tmp_path)]
    )
    gpu.main()
    results = json.loads((tmp_path / "results.json").read_text())["sections"]
    assert "out of budget" in results["a"]["skipped"]
    assert len(started) == 1 and started[0] <= 15  # "b" ran, within what was left
