"""Tests for mlp_exp.progress: the numbers it shows (with a fake clock), where it shows them, and the search's use of it.

References: counts, rates and ETAs worked out by hand for the trials fed in;
a real study run with stderr on a pipe, on a pseudo-terminal and with --quiet.
"""
import fcntl
import io
import logging
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import pytest

from fake_cifar import write_fake_cifar10
from helpers import cli_env
from mlp_exp.progress import StudyProgress, TrialOutcome, format_duration

LINE = re.compile(r"^trial \d+ (complete after \d+ epochs|pruned at epoch \d+|diverged in epoch \d+)"
                  r"( \(val \d\.\d{4}\))? \| \d+/\d+ done, best (\d\.\d{4}|-), ([\d.]+|\?) trials/h, ETA "
                  r"(\d+:\d\d:\d\d|\?)$")


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def progress_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "mlp_exp.progress"]


RESUMED = [TrialOutcome(0, "complete", 0.40, 5), TrialOutcome(1, "complete", 0.45, 30)]


@pytest.fixture
def caplog_info(caplog):
    caplog.set_level(logging.INFO, logger="mlp_exp.progress")
    return caplog


def test_one_line_per_finished_trial_with_rate_and_eta(caplog_info):
    clock, stream = Clock(), io.StringIO()
    progress = StudyProgress(10, stream=stream, clock=clock)
    with progress:
        progress.update(RESUMED)                        # a resumed study: these are not news
        assert progress_lines(caplog_info) == []
        assert progress.summary() == "2/10 done, best 0.4500, ? trials/h, ETA ?"
        clock.now += 1800
        progress.update(RESUMED + [TrialOutcome(2, "pruned", 0.41, 3)])
        progress.update(RESUMED + [TrialOutcome(2, "pruned", 0.41, 3)])     # nothing new: silent
    # one trial in half an hour since start: 2 per hour, 7 to go: 3.5 hours
    assert progress_lines(caplog_info) == [
        "trial 2 pruned at epoch 3 (val 0.4100) | 3/10 done, best 0.4500, 2.0 trials/h, ETA 3:30:00"]
    assert stream.getvalue() == ""                     # not a terminal: no bar


def test_several_new_trials_are_reported_in_order_with_running_counts(caplog_info):
    clock = Clock()
    progress = StudyProgress(4, stream=io.StringIO(), clock=clock)
    progress.update([])
    clock.now += 3600
    progress.update([TrialOutcome(1, "complete", 0.52, 30), TrialOutcome(0, "diverged", None, 2),
                     TrialOutcome(2, "complete", 0.50, 30)])
    lines = progress_lines(caplog_info)
    assert [line.split(" |")[0] for line in lines] == [
        "trial 0 diverged in epoch 2", "trial 1 complete after 30 epochs (val 0.5200)",
        "trial 2 complete after 30 epochs (val 0.5000)"]
    assert [line.split("| ")[1].split(",")[0] for line in lines] == ["1/4 done", "2/4 done", "3/4 done"]
    assert lines[-1].endswith("best 0.5200, 3.0 trials/h, ETA 0:20:00")
    assert all(LINE.match(line) for line in lines)


def test_pruned_values_are_not_the_best(caplog_info):
    progress = StudyProgress(3, stream=io.StringIO(), clock=Clock())
    progress.update([TrialOutcome(0, "pruned", 0.60, 1), TrialOutcome(1, "complete", 0.30, 4)])
    assert progress.best == 0.30


def test_quiet_shows_nothing_even_on_a_terminal(caplog_info):
    clock, stream = Clock(), Terminal()
    with StudyProgress(3, quiet=True, stream=stream, clock=clock) as progress:
        progress.update([])
        clock.now += 60
        progress.update([TrialOutcome(0, "complete", 0.3, 2)])
    assert progress_lines(caplog_info) == [] and stream.getvalue() == ""


def test_terminal_gets_a_bar_with_the_running_epoch(caplog_info):
    class Stats:
        epoch, val_accuracy = 4, 0.42

    clock, stream = Clock(), Terminal()
    with StudyProgress(10, stream=stream, clock=clock) as progress:
        progress.update(RESUMED)
        clock.now += 1800
        progress.update(RESUMED + [TrialOutcome(2, "complete", 0.47, 30)])
        progress.on_epoch(Stats())
    screen = stream.getvalue()
    assert "trials 3/10" in screen and "best 0.4700, 2.0 trials/h, ETA 3:30:00" in screen
    assert "epoch 4, val 0.420" in screen
    assert "\r" in screen                              # redrawn in place, not line after line
    assert len(progress_lines(caplog_info)) == 1


def test_format_duration():
    assert format_duration(3725) == "1:02:05"
    assert format_duration(59.6) == "0:01:00"
    assert format_duration(None) == "?"


# ------------------------------------------------------------- in a real study

@pytest.fixture(scope="module")
def study_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("progress")
    write_fake_cifar10(root / "data", per_batch=60, num_test=40)
    return root


def search(root, trials, *extra, stderr=subprocess.PIPE):
    env = cli_env()
    return subprocess.run(
        [sys.executable, "-m", "mlp_exp.search", "--trials", str(trials), "--train-size", "200",
         "--val-size", "60", "--test-size", "40", "--max-epochs", "2", "--data-dir", "data",
         "--fixed", "hidden_size=16", *extra], cwd=root, env=env, stdout=subprocess.PIPE, stderr=stderr,
        text=True, timeout=600)


@pytest.fixture(scope="module")
def runs(study_root):
    """The same study three times: 2 trials on a terminal, to 4 with stderr on a pipe, to 5 --quiet."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))    # rows, columns
    try:
        on_terminal = search(study_root, 2, stderr=terminal)
        os.close(terminal)
        chunks = []
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:                             # EIO: the other end is closed
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(controller)
    piped = search(study_root, 4)
    quiet = search(study_root, 5, "--quiet")
    return b"".join(chunks).decode(errors="replace"), on_terminal, piped, quiet


def test_search_on_a_terminal_draws_a_bar(runs):
    screen, result, _, _ = runs
    assert result.returncode == 0, screen
    assert "\r" in screen and "trials 2/2" in screen and "trials/h" in screen
    assert re.search(r"trial 1 (complete|pruned|diverged)", screen)       # the lines above the bar


def test_search_without_a_terminal_logs_one_line_per_trial(runs):
    _, _, result, _ = runs
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("trial ")]
    assert [int(line.split()[1]) for line in lines] == [2, 3]              # only the new trials
    assert all(LINE.match(line) for line in lines), lines
    assert "| 4/4 done" in lines[-1] and lines[-1].endswith("ETA 0:00:00")


def test_search_quiet_shows_no_progress(runs):
    _, _, _, result = runs
    assert result.returncode == 0, result.stderr
    assert not [line for line in result.stderr.splitlines() if line.startswith("trial ")]
    assert "trials/h" not in result.stderr and "\r" not in result.stderr
