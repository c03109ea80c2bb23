"""Config layering: dataclass defaults <- algo YAML (default, then env section) <- file <- --set."""

from dataclasses import dataclass

import pytest

from classic_rl.config import ConfigError, parse_set_args, resolve_config


@dataclass
class DemoConfig:
    learning_rate: float = 1e-3
    hidden: tuple[int, ...] = (64, 64)
    gamma: float = 0.99
    target: int | None = None
    double: bool = False

    def validate(self) -> None:
        if not 0.0 <= self.gamma <= 1.0:
            raise ConfigError(f"gamma must be in [0, 1], got {self.gamma}")


@pytest.fixture()
def config_root(tmp_path, monkeypatch):
    (tmp_path / "demo.yaml").write_text(
        "default:\n  learning_rate: 5.0e-4\n  hidden: [32, 32]\n"
        "envs:\n  CartPole-v1:\n    learning_rate: 2.3e-3\n"
    )
    monkeypatch.setattr("classic_rl.config.CONFIG_ROOT", tmp_path)
    return tmp_path


def test_layers_apply_in_order(config_root, tmp_path):
    generic = resolve_config(DemoConfig, "demo", "Acrobot-v1")
    assert generic.learning_rate == 5e-4 and generic.hidden == (32, 32)
    tuned = resolve_config(DemoConfig, "demo", "CartPole-v1")
    assert tuned.learning_rate == 2.3e-3
    user = tmp_path / "user.yaml"
    user.write_text("gamma: 0.9\n")
    cfg = resolve_config(DemoConfig, "demo", "CartPole-v1", config_file=user,
                         overrides=parse_set_args(["learning_rate=1e-2", "double=true", "target=none"]))
    assert (cfg.gamma, cfg.learning_rate, cfg.double, cfg.target) == (0.9, 1e-2, True, None)


def test_set_values_are_coerced_to_field_types(config_root):
    cfg = resolve_config(DemoConfig, "demo", "X-v0", overrides=parse_set_args(["hidden=[8,8,8]", "target=5"]))
    assert cfg.hidden == (8, 8, 8) and cfg.target == 5 and isinstance(cfg.learning_rate, float)


def test_unknown_key_names_the_valid_keys(config_root):
    with pytest.raises(ConfigError) as err:
        resolve_config(DemoConfig, "demo", "X-v0", overrides={"learning_rat": 1})
    message = str(err.value)
    assert "learning_rat" in message and "learning_rate" in message and "gamma" in message


def test_wrong_type_and_invalid_value_are_rejected(config_root):
    with pytest.raises(ConfigError, match="double"):
        resolve_config(DemoConfig, "demo", "X-v0", overrides={"double": "maybe"})
    with pytest.raises(ConfigError, match="gamma"):
        resolve_config(DemoConfig, "demo", "X-v0", overrides={"gamma": 1.5})
    with pytest.raises(ConfigError, match="key=value"):
        parse_set_args(["learning_rate"])


def test_atari_section_covers_unlisted_games_only(tmp_path, monkeypatch):
    (tmp_path / "demo.yaml").write_text(
        "default:\n  learning_rate: 5.0e-4\n"
        "atari:\n  learning_rate: 1.0e-4\n  hidden: []\n"
        "envs:\n  ALE/Pong-v5:\n    learning_rate: 2.0e-4\n"
    )
    monkeypatch.setattr("classic_rl.config.CONFIG_ROOT", tmp_path)
    for game in ("ALE/Breakout-v5", "SeaquestNoFrameskip-v4"):
        cfg = resolve_config(DemoConfig, "demo", game)
        assert cfg.learning_rate == 1e-4 and cfg.hidden == ()
    assert resolve_config(DemoConfig, "demo", "ALE/Pong-v5").learning_rate == 2e-4  # listed: envs wins
    assert resolve_config(DemoConfig, "demo", "CartPole-v1").learning_rate == 5e-4  # not Atari: default


def test_shipped_dqn_atari_defaults_reach_any_game():
    from classic_rl.agents.dqn import DQNConfig

    cfg = resolve_config(DQNConfig, "dqn", "ALE/MsPacman-v5")
    assert cfg.learning_starts == 100_000 and cfg.batch_size == 32 and tuple(cfg.hidden) == ()
