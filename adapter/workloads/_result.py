"""What the shipped workloads share: the GPU they may use (`torch_cuda`), and what each does with its answer (print
it, and keep it as $OUTPUT_DIR/result.json).

Imported by the workload scripts as a sibling module (a script's own folder is first on sys.path)."""

from __future__ import annotations

import json
import os
from typing import Any


def torch_cuda() -> Any:
    """The torch module when it imports and a CUDA GPU is visible (the GPU AMI case), else None: the workload then
    takes its CPU path."""
    try:
        import torch  # type: ignore[import-not-found]
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def write_result(result: dict[str, Any]) -> None:
    print(json.dumps(result))
    with open(os.path.join(os.environ.get("OUTPUT_DIR", "."), "result.json"), "w") as fh:
        json.dump(result, fh)
