"""Config validation: every branch names the file, the key and what is allowed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from fedcmr4d.config import (
    PACKAGED_CONFIGS,
    Config,
    config_from_dict,
    load_config,
    parse_override,
    resolve_config_path,
)
from fedcmr4d.errors import ConfigError

PACKAGED = sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml"))


def test_the_documented_configs_are_packaged() -> None:
    assert {"tiny", "tiny-dp", "cpu-small", "paper", "paper-dp"} <= set(PACKAGED)


@pytest.mark.parametrize("name", PACKAGED)
def test_every_packaged_config_loads_and_round_trips(name: str, tmp_path: Path) -> None:
    config = load_config(name)
    assert isinstance(config, Config)
    assert config.data.image_size % 4 == 0 and config.data.frames % 4 == 0
    saved = tmp_path / f"{name}.yaml"
    saved.write_text(config.to_yaml())
    assert load_config(saved) == config


def _keys_at_default(tree: dict[str, Any], default: dict[str, Any], path: str = "") -> list[str]:
    """Dotted keys of ``tree`` whose value equals ``default``'s, and sections left empty."""
    found = []
    for key, value in tree.items():
        dotted = f"{path}{key}"
        sub = default.get(key)
        if isinstance(value, dict) and isinstance(sub, dict) and sub:  # a section
            if not value:
                found.append(f"{dotted} (empty section)")
            found += _keys_at_default(value, sub, dotted + ".")
        elif value == sub:  # a value, or a mapping-valued field (stage -> q) at its default
            found.append(f"{dotted} = {value!r}")
    return found


@pytest.mark.parametrize("name", PACKAGED)
def test_packaged_configs_set_only_values_that_differ_from_the_defaults(name: str) -> None:
    # One set of defaults: the pydantic models. A YAML repeating a default would drift from it.
    tree = yaml.safe_load((PACKAGED_CONFIGS / f"{name}.yaml").read_text())
    default = Config().model_dump(mode="json")
    assert _keys_at_default(tree, default) == []


def test_paper_is_the_seed_design() -> None:
    # paper takes its geometry from the defaults; changing a default must not change it silently.
    paper = load_config("paper")
    assert (paper.data.image_size, paper.data.frames, paper.data.slices) == (384, 32, 6)
    assert paper.autoencoder.temporal_downsample == 4
    assert paper.autoencoder.embedding_dim == 8 and paper.diffusion.timesteps == 300
    dp = load_config("paper-dp")
    assert dp.diffusion == paper.diffusion
    assert dp.autoencoder.model_copy(update={"adversarial_start_step": 0}) == (
        paper.autoencoder.model_copy(update={"adversarial_start_step": 0})
    )


def test_dp_twins_enable_privacy() -> None:
    assert load_config("tiny-dp").privacy.enabled and not load_config("tiny").privacy.enabled
    assert load_config("paper-dp").privacy.enabled and not load_config("paper").privacy.enabled


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  image_sise: 64\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and "data.image_sise" in message and "unknown key" in message


def test_bad_literal_lists_allowed_values(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("privacy:\n  accountant: moments\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "privacy.accountant" in message and "'rdp'" in message and "moments" in message


def test_out_of_range_and_wrong_type_are_each_reported(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  frames: 2\ntrain:\n  autoencoder:\n    lr: fast\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert any("data.frames" in line for line in lines)
    assert any("train.autoencoder.lr" in line and "'fast'" in line for line in lines)


def test_cross_field_validation() -> None:
    with pytest.raises(ConfigError, match="divisible by 4"):
        config_from_dict({"data": {"image_size": 30}}, "x.yaml")
    with pytest.raises(ConfigError, match="attention_levels"):
        config_from_dict({"diffusion": {"channels": [8, 16], "attention_levels": [False]}})


def test_set_overrides_are_validated_like_the_file() -> None:
    config = load_config("tiny", ["data.frames=8", "privacy.enabled=true", "name=x"])
    assert config.data.frames == 8 and config.privacy.enabled and config.name == "x"
    with pytest.raises(ConfigError, match="data.bogus: unknown key"):
        load_config("tiny", ["data.bogus=1"])
    with pytest.raises(ConfigError, match="must be one of"):
        load_config("tiny", ["diffusion.schedule=foo"])
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        load_config("tiny", ["noequals"])
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config("tiny", ["data.image_size=[1"])
    with pytest.raises(ConfigError, match="'name' is not a section"):
        load_config("tiny", ["name.x=1"])


def test_parse_override_types() -> None:
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("a=1.0e-3") == ("a", 1e-3)
    # YAML 1.1 reads "1e-3" as a string; the float field still accepts it.
    assert load_config("tiny", ["train.autoencoder.lr=1e-3"]).train.autoencoder.lr == 1e-3
    assert parse_override("a=[1, 2]") == ("a", [1, 2])
    assert parse_override("a=") == ("a", "")


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file.*tiny"):
        resolve_config_path("nope")
    bad = tmp_path / "broken.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot read YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(scalar)


def test_round_steps_default_to_the_stage_steps_and_can_be_set_per_round() -> None:
    tiny = load_config("tiny")
    assert tiny.round_steps("autoencoder") == tiny.train.autoencoder.steps
    assert tiny.round_steps("diffusion") == tiny.train.diffusion.steps
    set_ = load_config("tiny", ["federation.local_steps_diffusion=7"])
    assert set_.round_steps("diffusion") == 7 and set_.round_steps("autoencoder") == 4
    with pytest.raises(ValueError, match="stage must be"):
        tiny.round_steps("audit")
    with pytest.raises(ConfigError, match="local_steps_autoencoder"):
        load_config("tiny", ["federation.local_steps_autoencoder=0"])


def test_paper_federation_spreads_the_local_run_over_its_rounds() -> None:
    paper = load_config("paper")
    for stage in ("autoencoder", "diffusion"):
        rounds = getattr(paper.federation, f"rounds_{stage}")
        assert rounds * paper.round_steps(stage) == getattr(paper.train, stage).steps
