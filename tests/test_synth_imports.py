"""Each provider submodule costs its import at every synth (10-45 ms each; bench/synth.py measures the whole). The
bindings only one gpu_mode builds are imported where that mode builds them (modules/fleet.py, host_template.py,
gpu.py), so an adopt-mode environment's synth never loads them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from modules.config import ROOT

OTHER_MODES = {
    "autoscaling_group",  # fleet
    "data_aws_availability_zones",
    "data_aws_subnet",
    "launch_template",  # create and fleet
    "security_group",
    "data_aws_ssm_parameter",
    "instance",  # create
}
COMPOSE_AND_LIST = """
import os, sys
import main
from cdktf import App
from modules.config import load_config
config = load_config("local", env=dict(os.environ))
assert config.gpu_mode == "adopt", config.gpu_mode
main.compose(App(outdir=sys.argv[1]), config)
print(" ".join(sorted(m.rsplit(".", 1)[1] for m in sys.modules if m.startswith("cdktf_cdktf_provider_aws."))))
"""


def test_an_adopt_mode_synth_loads_no_other_modes_bindings(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # conftest.py already silences jsii's Node banner
    done = subprocess.run(
        [sys.executable, "-c", COMPOSE_AND_LIST, str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    loaded = set(done.stdout.split())
    assert {"iam_role", "sqs_queue", "ssm_association"} <= loaded  # what adopt mode does build
    assert loaded & OTHER_MODES == set()
