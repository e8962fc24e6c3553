"""What every shipped workload does with its answer: print it, and keep it as $OUTPUT_DIR/result.json.

Imported by the workload scripts as a sibling module (a script's own folder is first on sys.path)."""

from __future__ import annotations

import json
import os
from typing import Any


def write_result(result: dict[str, Any]) -> None:
    print(json.dumps(result))
    with open(os.path.join(os.environ.get("OUTPUT_DIR", "."), "result.json"), "w") as fh:
        json.dump(result, fh)
