"""CDKTF constructs for the GPU orchestrator, one module per concept.

Importing this package registers `cdktf_cdktf_provider_aws` *without* running its `__init__`, which
eagerly imports all ~1,500 resource bindings (12-14 s). Constructs then import only the submodules they
use (`from cdktf_cdktf_provider_aws.sqs_queue import SqsQueue`), which is byte-for-byte the same JSON in
a fraction of the time. Set GPU_ORCH_STOCK_PROVIDER_IMPORT=1 to take the stock path (the synth
equivalence test and bench/synth.py do, to compare both).
"""

from __future__ import annotations

import importlib.util
import os
import sys

_PROVIDER = "cdktf_cdktf_provider_aws"


def _register_provider_package() -> None:
    if _PROVIDER in sys.modules:
        return
    if os.environ.get("GPU_ORCH_STOCK_PROVIDER_IMPORT") == "1":
        importlib.import_module(_PROVIDER)
        return
    spec = importlib.util.find_spec(_PROVIDER)
    if spec is None:
        raise ModuleNotFoundError(f"{_PROVIDER} is not installed: run `make synth` (it installs the pinned deps)")
    # A package module with __path__ set but its body never executed: submodule imports resolve normally.
    sys.modules[_PROVIDER] = importlib.util.module_from_spec(spec)


_register_provider_package()
