"""Environment settings: typed, validated before anything is written, one clear line per problem."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from modules.config import ROOT, ConfigError, load_config

ACCOUNT = {"CDK_DEFAULT_ACCOUNT": "111111111111"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "environments.toml"
    path.write_text(text)
    return path


def test_local_is_the_default_and_needs_no_aws_account() -> None:
    config = load_config(None, env={})
    assert config.name == "local" and config.remote_state is False
    assert config.gpu_instance_ids == ("i-0f0f6fd680921de5f",)
    assert config.idle_window_minutes == 30 and config.suffix == "-local"


def test_seed_overrides_win_over_the_file() -> None:
    config = load_config(
        "dev",
        env={
            **ACCOUNT,
            "CDK_DEFAULT_REGION": "eu-west-1",
            "CDK_CONTEXT_GPU_INSTANCE_ID": "i-0123456789abcdef0, i-0123456789abcdef1",
        },
    )
    assert config.account == "111111111111" and config.region == "eu-west-1"
    assert config.gpu_instance_ids == ("i-0123456789abcdef0", "i-0123456789abcdef1")
    assert config.resolved_state_bucket == "gpu-orchestrator-tfstate-dev-111111111111-eu-west-1"
    assert config.state_key("gpu-orchestrator-sqs") == "dev/gpu-orchestrator-sqs.tfstate"


@pytest.mark.parametrize(
    ("env_name", "env", "setting"),
    [
        ("nope", {}, "environment"),
        ("dev", {}, "account"),
        ("dev", {"CDK_DEFAULT_ACCOUNT": "12345"}, "account"),
        ("dev", {**ACCOUNT, "CDK_CONTEXT_GPU_INSTANCE_ID": "i-xyz"}, "gpu_instance_ids"),
        ("dev", {**ACCOUNT, "CDK_DEFAULT_REGION": "moon-1"}, "region"),
        ("prod", ACCOUNT, "gpu_instance_ids"),  # adopt mode without instances to adopt
        ("staging", {**ACCOUNT, "CDK_CONTEXT_GPU_INSTANCE_ID": "i-0123456789abcdef0"}, "gpu_instance_ids"),  # create
    ],
)
def test_bad_settings_fail_with_one_line_naming_setting_and_environment(
    env_name: str, env: dict[str, str], setting: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(env_name, env=env)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"environment '{env_name}': {setting}:")
    assert err.value.setting == setting


@pytest.mark.parametrize(
    ("body", "setting"),
    [
        (
            '[x]\naccount = "111111111111"\ngpu_instance_ids = ["i-0123456789abcdef0"]\nstate_bucket = "Bad_Bucket"\n',
            "state_bucket",
        ),
        (
            '[x]\naccount = "111111111111"\ngpu_instance_ids = ["i-0123456789abcdef0"]\nidle_window_minutes = 7\n',
            "idle_window_minutes",
        ),
        (
            '[x]\naccount = "111111111111"\ngpu_instance_ids = ["i-0123456789abcdef0"]\nidle_window_minutes = "30"\n',
            "idle_window_minutes",
        ),
        ('[x]\naccount = "111111111111"\ngpu_instance_ids = ["i-0123456789abcdef0"]\ncolour = "blue"\n', "colour"),
        (
            '[x]\naccount = "111111111111"\ngpu_instance_ids = ["i-0123456789abcdef0", "i-0123456789abcdef0"]\n',
            "gpu_instance_ids",
        ),
    ],
)
def test_file_errors(tmp_path: Path, body: str, setting: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config("x", env={}, path=write(tmp_path, body))
    assert err.value.setting == setting and err.value.environment == "x"


def test_main_refuses_bad_config_before_writing_anything(tmp_path: Path) -> None:
    outdir = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDK_")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "main.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **env,
            "ENV": "dev",
            "CDK_DEFAULT_ACCOUNT": "111111111111",
            "CDK_CONTEXT_GPU_INSTANCE_ID": "i-nope",
            "CDKTF_OUTDIR": str(outdir),
        },
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "config error: environment 'dev': gpu_instance_ids: 'i-nope' is not an EC2 instance id (i-0123456789abcdef0)"
    ]
    assert not outdir.exists()


CREATE = '[x]\naccount = "111111111111"\ngpu_mode = "create"\n'


def test_create_mode_takes_its_defaults_and_needs_no_instance_ids(tmp_path: Path) -> None:
    config = load_config("x", env={}, path=write(tmp_path, CREATE))
    assert (config.gpu_mode, config.gpu_instance_ids) == ("create", ())
    assert (config.instance_type, config.gpu_instance_count, config.root_volume_gb) == ("g5.xlarge", 1, 100)
    assert config.ami_parameter == (
        "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
    )
    assert config.parameter_prefix == "/gpu-orchestrator/x"
    bigger = CREATE + 'instance_type = "g6e.12xlarge"\ngpu_instance_count = 20\nroot_volume_gb = 16384\n'
    config = load_config("x", env={}, path=write(tmp_path, bigger))
    assert (config.instance_type, config.gpu_instance_count, config.root_volume_gb) == ("g6e.12xlarge", 20, 16384)


def test_every_environment_of_the_file_adopts_by_default() -> None:
    assert load_config("local", env={}).gpu_mode == "adopt"
    assert load_config("dev", env=ACCOUNT).gpu_mode == "adopt"


@pytest.mark.parametrize(
    ("body", "setting"),
    [
        ('[x]\naccount = "111111111111"\ngpu_mode = "spot"\ngpu_instance_ids = ["i-0123456789abcdef0"]\n', "gpu_mode"),
        (CREATE + 'gpu_instance_ids = ["i-0123456789abcdef0"]\n', "gpu_instance_ids"),
        (CREATE + "gpu_instance_count = 0\n", "gpu_instance_count"),
        (CREATE + "gpu_instance_count = 21\n", "gpu_instance_count"),
        (CREATE + "root_volume_gb = 0\n", "root_volume_gb"),
        (CREATE + "root_volume_gb = 16385\n", "root_volume_gb"),
        (CREATE + 'instance_type = "big"\n', "instance_type"),
        (CREATE + 'ami_parameter = "ami-0123456789abcdef0"\n', "ami_parameter"),
        (CREATE + 'gpu_instance_count = "2"\n', "gpu_instance_count"),
        (
            '[x]\naccount = "111111111111"\ngpu_instance_ids = ["i-0123456789abcdef0"]\ninstance_type = "g5.2xlarge"\n',
            "instance_type",
        ),
        (
            '[x]\naccount = "111111111111"\ngpu_instance_ids = ["i-0123456789abcdef0"]\ngpu_instance_count = 2\n',
            "gpu_instance_count",
        ),
    ],
)
def test_gpu_settings_fail_with_one_line(tmp_path: Path, body: str, setting: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config("x", env={}, path=write(tmp_path, body))
    assert err.value.setting == setting and "\n" not in str(err.value)
    assert str(err.value).startswith(f"environment 'x': {setting}:")


def test_create_mode_refuses_instance_ids_from_the_seed_override(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config("x", env={"CDK_CONTEXT_GPU_INSTANCE_ID": "i-0123456789abcdef0"}, path=write(tmp_path, CREATE))
    assert err.value.setting == "gpu_instance_ids"


FLEET = '[x]\naccount = "111111111111"\ngpu_mode = "fleet"\n'


def test_local_fleet_is_the_emulated_fleet_of_four_two_gpu_instances() -> None:
    config = load_config("local-fleet", env={})
    assert (config.gpu_mode, config.remote_state, config.gpu_instance_ids) == ("fleet", False, ())
    assert (config.fleet_max_size, config.gpus_per_instance, config.instance_type) == (4, 2, "g3.8xlarge")
    assert (config.fleet_spot, config.spot_types, config.handback_timeout_seconds) == (False, ("g3.8xlarge",), 300)
    assert config.suffix == "-local-fleet"


def test_fleet_mode_takes_its_defaults_and_every_setting(tmp_path: Path) -> None:
    config = load_config("x", env={}, path=write(tmp_path, FLEET))
    assert (config.fleet_max_size, config.gpus_per_instance, config.fleet_spot) == (1, 1, False)
    assert (config.spot_instance_types, config.fleet_subnet_ids, config.handback_timeout_seconds) == ((), (), 300)
    body = FLEET + (
        'instance_type = "g5.12xlarge"\nfleet_max_size = 100\ngpus_per_instance = 8\nfleet_spot = true\n'
        'spot_instance_types = ["g5.12xlarge", "g6.12xlarge"]\nhandback_timeout_seconds = 7200\n'
        'fleet_subnet_ids = ["subnet-0123456789abcdef0", "subnet-01234567"]\nroot_volume_gb = 200\n'
    )
    config = load_config("x", env={}, path=write(tmp_path, body))
    assert (config.fleet_max_size, config.gpus_per_instance, config.handback_timeout_seconds) == (100, 8, 7200)
    assert config.spot_types == ("g5.12xlarge", "g6.12xlarge") and config.fleet_spot is True
    assert config.fleet_subnet_ids == ("subnet-0123456789abcdef0", "subnet-01234567")
    assert config.root_volume_gb == 200


@pytest.mark.parametrize(
    ("body", "setting"),
    [
        (FLEET + 'gpu_instance_ids = ["i-0123456789abcdef0"]\n', "gpu_instance_ids"),
        (FLEET + "fleet_max_size = 0\n", "fleet_max_size"),
        (FLEET + "fleet_max_size = 101\n", "fleet_max_size"),
        (FLEET + "gpus_per_instance = 0\n", "gpus_per_instance"),
        (FLEET + "gpus_per_instance = 9\n", "gpus_per_instance"),
        (FLEET + "handback_timeout_seconds = 29\n", "handback_timeout_seconds"),
        (FLEET + "handback_timeout_seconds = 7201\n", "handback_timeout_seconds"),
        (FLEET + 'fleet_spot = "yes"\n', "fleet_spot"),
        (FLEET + 'spot_instance_types = ["g5.xlarge"]\n', "spot_instance_types"),  # without fleet_spot
        (FLEET + 'fleet_spot = true\nspot_instance_types = ["G5"]\n', "spot_instance_types"),
        (FLEET + 'fleet_spot = true\nspot_instance_types = ["g5.xlarge", "g5.xlarge"]\n', "spot_instance_types"),
        (
            FLEET
            + "fleet_spot = true\nspot_instance_types = ["
            + ", ".join(f'"g{n}.xlarge"' for n in range(41))
            + "]\n",
            "spot_instance_types",
        ),
        (FLEET + 'spot_instance_types = "g5.xlarge"\n', "spot_instance_types"),
        (FLEET + 'fleet_subnet_ids = ["subnet-nope"]\n', "fleet_subnet_ids"),
        (FLEET + 'fleet_subnet_ids = ["subnet-01234567", "subnet-01234567"]\n', "fleet_subnet_ids"),
        (FLEET + "fleet_subnet_ids = [1]\n", "fleet_subnet_ids"),
        (FLEET + "gpu_instance_count = 2\n", "gpu_instance_count"),  # create mode's
        (FLEET + 'instance_type = "big"\n', "instance_type"),
        (FLEET + "root_volume_gb = 0\n", "root_volume_gb"),
        (CREATE + "fleet_max_size = 4\n", "fleet_max_size"),  # fleet mode's, in create mode
        (CREATE + "fleet_spot = true\n", "fleet_spot"),
        (
            '[x]\naccount = "111111111111"\ngpu_instance_ids = ["i-0123456789abcdef0"]\ngpus_per_instance = 2\n',
            "gpus_per_instance",
        ),
        (
            '[x]\naccount = "111111111111"\ngpu_instance_ids = ["i-0123456789abcdef0"]\n'
            "handback_timeout_seconds = 600\n",
            "handback_timeout_seconds",
        ),
    ],
)
def test_fleet_settings_fail_with_one_line(tmp_path: Path, body: str, setting: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config("x", env={}, path=write(tmp_path, body))
    assert err.value.setting == setting and "\n" not in str(err.value)
    assert str(err.value).startswith(f"environment 'x': {setting}:")


def test_a_setting_of_another_mode_names_the_modes_that_read_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match='gpus_per_instance: only read when gpu_mode = "fleet"'):
        load_config("x", env={}, path=write(tmp_path, CREATE + "gpus_per_instance = 2\n"))
    with pytest.raises(ConfigError, match='root_volume_gb: only read when gpu_mode = "create" or "fleet"'):
        body = '[x]\naccount = "111111111111"\ngpu_instance_ids = ["i-0123456789abcdef0"]\nroot_volume_gb = 200\n'
        load_config("x", env={}, path=write(tmp_path, body))


def test_fleet_mode_refuses_instance_ids_from_the_seed_override(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config("x", env={"CDK_CONTEXT_GPU_INSTANCE_ID": "i-0123456789abcdef0"}, path=write(tmp_path, FLEET))
    assert err.value.setting == "gpu_instance_ids" and "fleet" in str(err.value)
