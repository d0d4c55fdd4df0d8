"""Typed run config / node config, and how a simulated site finds its cohort."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcmr4d.config import load_config
from fedcmr4d.errors import ConfigError
from fedcmr4d.federated.settings import RunSettings, SiteSettings


def test_run_config_typed_and_round_trips() -> None:
    settings = RunSettings.from_run_config(
        {"config": "tiny", "rounds-autoencoder": 3, "resume": True, "round-timeout": 60}
    )
    assert settings.rounds_autoencoder == 3 and settings.resume is True
    assert settings.round_timeout == 60.0
    assert RunSettings.from_run_config(settings.to_run_config()) == settings


@pytest.mark.parametrize(
    ("run_config", "needle"),
    [
        ({"rounds-autoencodr": 3}, "unknown key 'rounds-autoencodr'"),
        ({"rounds-autoencoder": "three"}, "rounds-autoencoder: expected int"),
        ({"stages": "diffusion,autoencoder"}, "must be in the order"),
        ({"stages": "autoencoder,sampling"}, "sampling"),
        ({"test-corrupt": "1:nan"}, "unknown key 'test-corrupt'"),  # no test hooks in the app
    ],
)
def test_run_config_errors_name_the_key(run_config, needle) -> None:
    with pytest.raises(ConfigError, match=needle):
        RunSettings.from_run_config(run_config)


def test_rounds_from_run_config_or_yaml_and_overrides() -> None:
    settings = RunSettings(overrides="federation.rounds_diffusion=4; seed=7", rounds_autoencoder=2)
    cfg = settings.load()
    assert cfg.seed == 7
    assert settings.rounds("autoencoder", cfg) == 2
    assert settings.rounds("diffusion", cfg) == 4


def test_simulated_site_maps_partition_to_sorted_folder(tmp_path: Path) -> None:
    for name in ("site-b", "site-a", ".hidden"):
        (tmp_path / "cohorts" / name).mkdir(parents=True)
    message = {"cohort-root": str(tmp_path / "cohorts")}
    first = SiteSettings.resolve({"partition-id": 0, "num-partitions": 2}, message)
    second = SiteSettings.resolve({"partition-id": 1, "num-partitions": 2}, message)
    assert first.cohort.name == "site-a"
    assert second.cohort.name == "site-b"
    with pytest.raises(ConfigError, match="site 2 has no cohort folder"):
        SiteSettings.resolve({"partition-id": 2, "num-partitions": 3}, message)


def test_deployed_site_reads_node_config_and_applies_budget(tmp_path: Path) -> None:
    node = {
        "cohort": str(tmp_path / "hospital"),
        "state-dir": str(tmp_path / "state"),
        "target-epsilon": 4,
        "holdout-fraction": 0.5,
        "device": "cpu",
    }
    site = SiteSettings.resolve(node, {})
    assert site.name == "hospital" and site.state_dir == tmp_path / "state"
    cfg = site.apply(load_config("tiny", ["privacy.target_epsilon=100"]))
    assert cfg.privacy.target_epsilon == 4.0  # the site's budget, not the coordinator's
    assert cfg.data.holdout_fraction == 0.5
    bad = SiteSettings.resolve({**node, "holdout-fraction": 1.5}, {})
    with pytest.raises(ConfigError, match="holdout_fraction"):
        bad.apply(load_config("tiny"))


def test_node_config_without_cohort_is_an_error() -> None:
    with pytest.raises(ConfigError, match="set cohort="):
        SiteSettings.resolve({}, {})
