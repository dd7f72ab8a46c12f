"""The front door: every command in ``--help``, kit commands before Lightning, one-line errors, choices typed as
``Literal``, and ``python -m lightning`` after installing the kit (regular and editable)."""

import os
import shutil
import subprocess
import sys
import sysconfig
from typing import get_args

import pytest

from skinflow.entry import COMMANDS, LIGHTNING, usage
from tests.conftest import REPO

ENV = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1"}


def run(args, cwd=REPO, python=sys.executable, timeout=300):
    return subprocess.run([python, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


def test_help_lists_every_command_with_its_line():
    done = run(["-m", "skinflow", "--help"])
    assert done.returncode == 0
    for name, (_, line) in COMMANDS.items():
        assert f"  {name}" in done.stdout and line in done.stdout, name
    assert done.stdout.strip() == usage().strip()


@pytest.mark.parametrize("command", sorted(set(COMMANDS) - set(LIGHTNING)))
def test_kit_commands_answer_help_without_importing_lightning(command):
    code = ("import sys; from skinflow.entry import main\n"
            f"try:\n    main([{command!r}, '--help'])\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
            "print('LIGHTNING' if any(m == 'lightning' or m.startswith('lightning.') for m in sys.modules) else 'CLEAN')")
    done = run(["-c", code])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("CLEAN") and "usage:" in done.stdout


def test_unknown_command_is_one_line_naming_it():
    done = run(["-m", "skinflow", "fitt"])
    assert done.returncode != 0 and done.stderr.strip().splitlines() == [
        "error: unknown command 'fitt' (did you mean fit?); `python -m skinflow --help` lists the commands"]


CONFIG = "configs/experiment/stage2_tiny_synthetic.yaml"


@pytest.mark.parametrize("bad, expected", [
    (["--model.init_args.loss", "grpoo"], "error: --model.init_args.loss: 'grpoo' is not one of grpo, dr_grpo, dapo"),
    (["--data.init_args.split", "randm"], "error: --data.init_args.split: 'randm' is not one of random, a12"),
    (["--model.init_args.bogus", "3"], "error: --model.init_args.bogus: no such option of skinflow.stages.grpo.GRPOStage"),
])
def test_bad_key_or_value_fails_in_a_few_lines_naming_it(bad, expected, tmp_path, capsys):
    from skinflow.cli import main

    os.chdir(tmp_path)  # the MLflow store, should a logger be built, stays in tmp_path
    try:
        with pytest.raises(SystemExit) as stop:
            main(["fit", "--config", str(REPO / CONFIG), f"--data.init_args.cache_dir={tmp_path}", *bad])
    finally:
        os.chdir(REPO)
    err = [line for line in capsys.readouterr().err.splitlines() if " INFO mlflow" not in line and line.strip()]
    assert stop.value.code == 2
    assert len(err) < 5 and err[0].startswith(expected), err


def test_a_constructor_error_is_one_line_with_exit_status_2(tmp_path):
    """Raised while the stage is built (after MLflow's logger exists): a subprocess, as a user runs it."""
    done = run(["-m", "skinflow", "fit", "--config", str(REPO / CONFIG), "--model.init_args.group_size", "1",
                f"--data.init_args.cache_dir={tmp_path}"], cwd=tmp_path)
    err = [line for line in done.stderr.splitlines() if " INFO mlflow" not in line and "Seed set" not in line]
    assert done.returncode == 2 and err == ["error: group_size=1: GRPO needs at least 2 completions per image"], done.stderr


def test_debug_shows_the_traceback_of_an_input_error(tmp_path, capsys):
    from skinflow.errors import ConfigError
    from skinflow.entry import main

    os.chdir(tmp_path)
    try:
        with pytest.raises(ValueError) as raised:
            main(["fit", "--config", str(REPO / CONFIG), "--model.init_args.group_size", "1", "--debug"])
    finally:
        os.chdir(REPO)
        os.environ.pop("JSONARGPARSE_DEBUG", None)
    from skinflow.errors import user_error

    assert isinstance(user_error(raised.value), ConfigError)


def test_pipeline_error_is_one_line(tmp_path):
    done = run(["-m", "skinflow", "pipeline", "--config", str(tmp_path / "missing.yaml")])
    assert done.returncode == 2 and done.stderr.strip() == f"error: pipeline file not found: {tmp_path / 'missing.yaml'}"


def test_choice_literals_match_what_the_code_accepts():
    from skinflow.data.collate import MIXED, PromptChoice
    from skinflow.data.formats import PROMPTS
    from skinflow.data.splits import FST_HOLDOUTS, PRESETS, SplitPreset
    from skinflow.models.backbone import PRESET_CONFIGS, Preset
    from skinflow.rl.grpo import LOSS_WEIGHTS, LossName

    assert set(get_args(LossName)) == set(LOSS_WEIGHTS)
    assert set(get_args(PromptChoice)) == {*PROMPTS, MIXED}
    assert PRESETS == get_args(SplitPreset) and set(FST_HOLDOUTS) <= set(PRESETS)
    assert set(get_args(Preset)) == {"tiny", *PRESET_CONFIGS}


def fresh_venv(folder, editable: bool):
    """A bare virtualenv that sees this environment's packages (a .pth line) and installs only the kit."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(purelib, "_outer_env.pth"), "w") as handle:
        handle.write(sysconfig.get_paths()["purelib"] + "\n")
    build = folder / "src"  # the working tree as it is (a pip build writes into the source folder)
    top = {".git", ".venv", "mlruns", ".cache", "data", "audit", "build", "notebooks"}  # run-time folders at the top
    shutil.copytree(REPO, build, ignore=lambda where, names: [n for n in names if (n in top and os.path.samefile(where, REPO))
                                                              or n == "__pycache__" or n.endswith(".egg-info")])
    install = [python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    done = subprocess.run([*install, *(["-e"] if editable else []), str(build)], capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr[-2000:]
    return python, purelib


@pytest.mark.parametrize("editable", [False, True], ids=["regular", "editable"])
def test_python_m_lightning_runs_the_kit_cli_after_install(tmp_path, editable):
    python, purelib = fresh_venv(tmp_path / "venv", editable)
    assert os.path.isfile(os.path.join(purelib, "skinflow-lightning.pth"))
    done = run(["-m", "lightning", "--help"], cwd=tmp_path, python=python)
    assert done.returncode == 0 and done.stdout.strip() == usage().strip(), done.stderr[-2000:]
    if not editable:  # the same dispatch as --help above; the parse is the same code either way (about 20 s)
        done = run(["-m", "lightning", "fit", "--config", str(REPO / CONFIG), "--model.init_args.loss", "grpoo"],
                   cwd=tmp_path, python=python)
        assert done.returncode == 2 and "'grpoo' is not one of grpo, dr_grpo, dapo" in done.stderr
    done = run(["-m", "lightning", "pipeline"], cwd=tmp_path, python=python)
    assert done.returncode != 0 and "is a skinflow command" in done.stderr


def test_the_hook_never_shadows_a_lightning_main(tmp_path):
    """Should Lightning ship ``lightning/__main__.py`` again, it runs, not the kit's."""
    fake = tmp_path / "lightning"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "__main__.py").write_text("print('LIGHTNING OWN MAIN')\n")
    code = ("import sys; sys.path.insert(0, %r); import _skinflow_lightning_hook, runpy; "
            "runpy.run_module('lightning', run_name='__main__', alter_sys=True)") % str(tmp_path)
    done = run(["-c", code], cwd=tmp_path)
    assert done.stdout.strip() == "LIGHTNING OWN MAIN", done.stderr


def test_lightnings_litlogger_advert_is_dropped_and_other_info_kept(caplog):
    import logging

    import skinflow.launcher  # noqa: F401  installs the filter
    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        rank_zero_info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger](...)")
        rank_zero_info("GPU available: False, used: False")
    assert "litlogger" not in caplog.text and "GPU available" in caplog.text


def test_a_fit_whose_output_is_not_a_terminal_prints_progress_lines(tmp_path, monkeypatch, capsys):
    import re

    from skinflow.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SKINFLOW_PROGRESS_SECONDS", "0")  # a line every step
    main(["fit", "--config", str(REPO / "configs/experiment/warmup_tiny_synthetic.yaml"), "--trainer.logger=false",
          "--data.init_args.synthetic_per_class=4", "--data.init_args.progress=false", "--trainer.max_epochs=2",
          "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=0", f"--trainer.default_root_dir={tmp_path}",
          "--trainer.enable_progress_bar=false"])
    lines = re.findall(r"^\[warmup\] step (\d+)/(\d+) \(epoch (\d)/2\)  [\d.]+ steps/s.*train/loss [\d.]+", capsys.readouterr().out,
                       re.MULTILINE)
    assert [(int(s), int(t)) for s, t, _ in lines][:4] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert lines[-1][0] == "4" and lines[-1][2] == "2"  # the end, in the second epoch


def test_fit_help_lists_the_kit_stages_and_short_names_resolve(capsys):
    from skinflow.cli import main

    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in ("skinflow.stages.grpo.GRPOStage", "skinflow.stages.warmup.WarmupStage",
                 "skinflow.data.datamodule.Fitzpatrick17kDataModule"):
        assert name in text
    with pytest.raises(SystemExit):
        main(["fit", "--model.help", "GRPOStage"])
    out = capsys.readouterr()
    assert "--model.group_size" in out.out and "error" not in out.err  # the short name resolved to GRPOStage
