"""The commands as a shell sees them: `mlp-exp COMMAND`, --version, and the storage and study
name taken from the environment (MLP_EXP_STORAGE, MLP_EXP_STUDY; a flag still wins)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import mlp_exp
from fake_cifar import write_fake_cifar10
from helpers import cli_env, run_cli
from stores import TINY, load_study

COMMANDS = ("search", "ui", "evaluate", "report")


@pytest.mark.parametrize("module", [f"mlp_exp.{c}" for c in COMMANDS] + ["mlp_exp"])
def test_every_command_says_its_version(tmp_path, module):
    result = run_cli(module, "--version", cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"mlp_exp {mlp_exp.__version__}"
    assert mlp_exp.__version__ != "0+unknown"       # the installed package's version, not the fallback


def test_mlp_exp_lists_its_commands_and_refuses_an_unknown_one_in_one_line(tmp_path):
    listed = run_cli("mlp_exp", "--help", cwd=tmp_path, timeout=120)
    assert listed.returncode == 0 and all(f"  {c} " in listed.stdout for c in COMMANDS), listed.stdout
    bare = run_cli("mlp_exp", cwd=tmp_path, timeout=120)
    assert bare.returncode == 2 and "usage: mlp-exp COMMAND" in bare.stderr and bare.stdout == ""
    unknown = run_cli("mlp_exp", "serach", cwd=tmp_path, timeout=120)
    assert unknown.returncode == 2 and unknown.stderr.strip().splitlines() == [
        "error: unknown command 'serach'; choose one of search, ui, evaluate, report (see mlp-exp --help)"]


def test_the_console_script_is_installed_beside_python():
    script = Path(sys.executable).parent / "mlp-exp"
    assert script.is_file() or shutil.which("mlp-exp"), "pip install -e . did not install mlp-exp"
    result = subprocess.run([str(script if script.is_file() else shutil.which("mlp-exp")), "evaluate", "--help"],
                            capture_output=True, text=True, env=cli_env(), timeout=120)
    assert result.returncode == 0 and "--model-uri" in result.stdout, result.stderr


@pytest.mark.slow
def test_storage_and_study_name_come_from_the_environment_and_a_flag_wins(tmp_path):
    write_fake_cifar10(tmp_path / "data", per_batch=80, num_test=50)
    storage = f"sqlite:///{tmp_path}/elsewhere.db"
    env = dict(MLP_EXP_STORAGE=storage, MLP_EXP_STUDY="from-env")
    first = run_cli("mlp_exp", "search", "--trials", "1", *TINY, "--no-finalize", cwd=tmp_path, **env)
    assert first.returncode == 0, first.stderr
    assert not (tmp_path / "studies" / "optuna.db").exists()         # the default storage was not used
    assert len(load_study(storage, "from-env").get_trials()) == 1
    flagged = run_cli("mlp_exp.search", "--trials", "1", *TINY, "--no-finalize", "--study-name", "from-flag",
                      cwd=tmp_path, **env)
    assert flagged.returncode == 0, flagged.stderr
    assert len(load_study(storage, "from-flag").get_trials()) == 1
    assert len(load_study(storage, "from-env").get_trials()) == 1    # untouched
