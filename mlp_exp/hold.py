"""A hook for tests that stop a command at a given moment: hold it there until released.

A test that sends Ctrl-C, SIGTERM or kill -9 "while a trial trains" cannot
race a timer against real work: on a busy machine a tiny trial finishes
before the signal lands, on an idle one before the test even sees it start.
With MLP_EXP_HOLD_DIR set, every trial numbered 1 or more (trial 0, the
baseline, runs through, so the study has a finished trial) stops after its
first epoch has been logged and reported, writes `held-<trial number>` into
that folder, and waits there, interruptible, until the folder holds a file
named `release`. The test waits for the `held-` file, and then the trial is
exactly where it wants it. Steps outside the trial loop are held the same
way by name (hold_step): `held-finalize` once a study's best trial is
promoted and before the champion is scored on the test set, `held-evaluate`
once `evaluate` has scored and before it logs. Unset (always, outside tests)
this does nothing.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

HOLD_DIR_ENV = "MLP_EXP_HOLD_DIR"
HELD_FROM_TRIAL = 1
HELD_AFTER_EPOCH = 1
RELEASE = "release"


def hold_trial(trial_number: int, epoch: int, check) -> None:
    """Wait here if the environment asks to hold this trial at this epoch; `check()` raises a
    pending interrupt (Interrupts.check), so a signal ends the wait as it would end training."""
    if trial_number >= HELD_FROM_TRIAL and epoch == HELD_AFTER_EPOCH:
        hold_step(str(trial_number), check)


def hold_step(name: str, check) -> None:
    """Write `held-<name>` into the hold folder and wait until it holds `release` (nothing, if
    MLP_EXP_HOLD_DIR is unset or `release` is already there); `check()` as for hold_trial."""
    folder = os.environ.get(HOLD_DIR_ENV)
    if not folder:
        return
    folder = Path(folder)
    if (folder / RELEASE).exists():
        return
    pending = folder / f".held-{name}.tmp"
    pending.write_text(str(os.getpid()))
    os.replace(pending, folder / f"held-{name}")     # whole, for the test reading it
    while not (folder / RELEASE).exists():
        check()
        time.sleep(0.02)
