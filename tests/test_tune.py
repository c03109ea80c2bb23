"""`classic-rl tune`: a study in a real SQLite file that survives kill -9, prunes with the median
pruner, writes a best.yaml that `classic-rl train --config` takes, and refuses bad input in one line."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

optuna = pytest.importorskip("optuna")
from optuna.trial import TrialState  # noqa: E402

from classic_rl.cli import main  # noqa: E402
from classic_rl.config import apply_overrides, resolve_config  # noqa: E402
from classic_rl.registry import get_algorithm  # noqa: E402
from classic_rl.search_spaces import BUILT_IN, Budget, space_for  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMALL_PPO_SPACE = (
    "learning_rate: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}\n"
    "n_steps: {type: categorical, choices: [16, 32]}\n"
    "n_epochs: {type: int, low: 2, high: 10}\n"
    "batch_size: 64\n"
)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def load(out: Path, name="ppo-CartPole-v1"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out}/study.db")


def test_built_in_spaces_sample_valid_settings_of_each_algorithm():
    for algo in BUILT_IN:
        study = optuna.create_study(direction="maximize")
        agent_cls = get_algorithm(algo)
        env = "Pendulum-v1" if algo in ("sac", "td3", "ddpg") else "CartPole-v1"
        base = resolve_config(agent_cls.Config, algo, env)
        space = space_for(algo, Budget(50_000, 5, base), None, agent_cls.Config)
        for _ in range(3):
            settings = space.sample(study.ask())
            assert settings, algo  # a built-in space searches something
            tuned = apply_overrides(base, settings, f"{algo}'s built-in space")  # names and values the config takes
            for name, value in settings.items():  # each sampled value is the one the agent would train with
                assert getattr(tuned, name) == pytest.approx(value), (algo, name)


def test_rollouts_that_do_not_fit_between_evaluations_are_not_offered():
    base = resolve_config(get_algorithm("ppo").Config, "ppo", "CartPole-v1")  # 8 envs
    space = space_for("ppo", Budget(2_000, 5, base), None, get_algorithm("ppo").Config)
    n_steps = next(p for p in space.params if p.name == "n_steps")
    assert n_steps.choices == (32,)  # 8 x 32 = 256 <= 2000 / 5; 8 x 64 is not


@pytest.mark.slow  # two processes of `classic-rl tune` (each imports torch and optuna)
def test_a_killed_tune_continues_without_losing_or_double_counting_a_trial(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(SMALL_PPO_SPACE)
    out = tmp_path / "tune"
    argv = ["tune", "ppo", "CartPole-v1", "--trials", "3", "--steps", "1000", "--out", str(out), "--space", str(space),
            "--startup-trials", "5"]
    cmd = [sys.executable, "-m", "classic_rl", *argv]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("trial 1: started"):  # trial 0 is COMPLETE in the database, trial 1 RUNNING
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    before = load(out).trials
    assert [t.state for t in before] == [TrialState.COMPLETE, TrialState.RUNNING]

    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "trial 1 was left RUNNING by a process that is gone: marked FAIL" in rerun.stdout
    trials = load(out).trials
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 3
    assert trials[0].state == TrialState.COMPLETE and trials[0].value == before[0].value
    assert trials[0].params == before[0].params
    assert trials[1].state == TrialState.FAIL
    # The killed trial's settings ran again, once, as a new trial.
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == 1]
    assert len(retried) == 1 and retried[0].params == trials[1].params
    assert (out / "best.yaml").is_file() and (out / "optimization_history.png").is_file()

    # A third run with the same --trials has nothing left to do (in this process: no kill needed).
    assert main(argv) == 0
    assert "3 of 3 trials finished" in capsys.readouterr().out
    assert len(load(out).trials) == len(trials)


@pytest.fixture(scope="module")
def pruned_study(tmp_path_factory):
    """Three enqueued trials: one that learns, then two whose learning rate cannot move the policy."""
    root = tmp_path_factory.mktemp("prune")
    space = root / "space.yaml"
    space.write_text("learning_rate: {type: float, low: 1.0e-9, high: 3.0e-3, log: true}\n")
    out = root / "tune"
    out.mkdir()
    study = optuna.create_study(study_name="ppo-CartPole-v1", storage=f"sqlite:///{out}/study.db", direction="maximize")
    for lr in (1e-3, 1e-9, 2e-9):
        study.enqueue_trial({"learning_rate": lr})
    argv = ["tune", "ppo", "CartPole-v1", "--trials", "3", "--steps", "1600", "--out", str(out), "--space", str(space),
            "--startup-trials", "1", "--evaluations", "2"]
    assert main(argv) == 0
    return out, argv


def test_the_median_pruner_prunes_trials_below_the_median(pruned_study):
    out, _ = pruned_study
    trials = load(out).trials
    assert trials[0].state == TrialState.COMPLETE and sorted(trials[0].intermediate_values) == [1, 2]
    assert [t.state for t in trials[1:]] == [TrialState.PRUNED, TrialState.PRUNED]
    for trial in trials[1:]:  # stopped at the first evaluation, below the complete trial's
        assert list(trial.intermediate_values) == [1]
        assert trial.intermediate_values[1] < trials[0].intermediate_values[1]


def test_best_yaml_trains_through_the_train_command(pruned_study, tmp_path, capsys):
    out, _ = pruned_study
    best = out / "best.yaml"
    assert yaml.safe_load(best.read_text()) == {"learning_rate": 1e-3}
    assert best.read_text().startswith("# classic-rl tune: trial 0 of study 'ppo-CartPole-v1'")
    run = tmp_path / "run"
    assert main(["train", "ppo", "CartPole-v1", "--config", str(best), "--steps", "300", "--eval-episodes", "1",
                 "--quiet", "--out", str(run)]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["config"]["learning_rate"] == 1e-3


def test_a_rerun_with_other_settings_is_refused(pruned_study, capsys):
    out, argv = pruned_study
    steps = argv.index("--steps") + 1
    assert main([*argv[:steps], "3200", *argv[steps + 1:]]) == 2
    err = one_line_error(capsys)
    assert "--steps differs from study 'ppo-CartPole-v1'" in err and "--steps 1600" in err
    assert len(load(out).trials) == 3


@pytest.mark.parametrize("content, words", [
    ("learning_rat: {type: float, low: 1.0e-5, high: 1.0e-3}\n", ["'learning_rat' is not a setting", "learning_rate"]),
    ("learning_rate: {low: 1.0e-5, high: 1.0e-3}\n", ["learning_rate: type must be one of float, int, categorical"]),
    ("learning_rate: {type: float, low: 1.0e-3, high: 1.0e-5}\n", ["learning_rate: low must be below high"]),
    ("learning_rate: {type: float, low: 0, high: 1.0e-3, log: true}\n", ["learning_rate: log: true needs low > 0"]),
    ("batch_size: {type: categorical, choices: []}\n", ["batch_size: categorical needs a non-empty list"]),
    ("n_epochs: {type: int, low: 1, high: 9, lg: true}\n", ["n_epochs: unknown key 'lg'"]),
    ("learning_rate: [1.0e-3\n", ["invalid YAML"]),
])
def test_a_bad_space_file_is_one_line_naming_the_file_and_key(tmp_path, capsys, content, words):
    space = tmp_path / "space.yaml"
    space.write_text(content)
    out = tmp_path / "tune"
    assert main(["tune", "ppo", "CartPole-v1", "--trials", "2", "--steps", "100", "--out", str(out),
                 "--space", str(space)]) == 2
    err = one_line_error(capsys)
    assert str(space) in err
    for word in words:
        assert word in err
    assert not out.exists()  # nothing was created


@pytest.mark.parametrize("algo, env, words", [
    ("ppoo", "CartPole-v1", ["Unknown algorithm 'ppoo'", "Did you mean ppo"]),
    ("ppo", "CartPol-v1", ["Unknown environment 'CartPol-v1'", "CartPole-v1"]),
    ("sac", "CartPole-v1", ["sac needs a continuous action space"]),
])
def test_unknown_algorithm_or_environment_is_one_line(tmp_path, capsys, algo, env, words):
    assert main(["tune", algo, env, "--trials", "2", "--steps", "100", "--out", str(tmp_path / "t")]) == 2
    err = one_line_error(capsys)
    for word in words:
        assert word in err


def test_an_algorithm_without_built_in_space_needs_space(tmp_path, capsys):
    assert main(["tune", "reinforce", "CartPole-v1", "--trials", "2", "--steps", "100", "--out", str(tmp_path)]) == 2
    assert "reinforce has no built-in search space" in one_line_error(capsys)


def test_without_optuna_one_line_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` now raises ImportError
    assert main(["tune", "ppo", "CartPole-v1", "--trials", "2", "--steps", "100", "--out", str(tmp_path)]) == 2
    assert 'pip install -e ".[tune]"' in one_line_error(capsys)


def test_the_readme_tuning_commands_parse_and_name_real_extras():
    import re
    import shlex

    from classic_rl.cli import build_parser

    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- readme-commands: tune-benchmark -->\s*\n```bash\n(.*?)\n```", readme, re.S).group(1)
    lines = [line.split("   #")[0].strip() for line in block.splitlines()]
    pyproject = (ROOT / "pyproject.toml").read_text()  # (tomllib is Python 3.11+)
    assert 'tune = ["optuna>=4.9"]' in pyproject and 'benchmark = ["rliable>=1.2"]' in pyproject
    dev = re.search(r"^dev = \[(.*?)\]", pyproject, re.S | re.M).group(1)
    assert '"optuna>=4.9"' in dev and '"rliable>=1.2"' in dev
    commands = [shlex.split(line)[1:] for line in lines if line.startswith("classic-rl ")]
    assert [c[0] for c in commands] == ["tune", "train", "benchmark", "benchmark"]
    for argv in commands:
        build_parser().parse_args(argv)  # exits (SystemExit) on a flag that does not exist
