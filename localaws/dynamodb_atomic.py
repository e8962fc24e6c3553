"""DynamoDB requests applied one at a time, as AWS documents them: atomic and isolated.

AWS: a TransactWriteItems is all-or-nothing and serializable with every other write, and each single-item write
is atomic (its ConditionExpression is checked against the item as it is when the write applies). moto's server
handles requests on concurrent threads without a lock: a transaction deep-copies the tables it touches, checks
its conditions, writes, and on a failed condition restores the copy. Two racing transactions can then both pass
`attribute_not_exists` (two tasks under one idempotency marker), and a failed one's restore can erase a write
that landed meanwhile.

Modelled here: one lock around every DynamoDB request moto serves in this process, so each request sees the
state every earlier request left and leaves its own whole. That is stricter than AWS (which runs writes to
different items in parallel) and equivalent for any client: no caller can observe the difference but timing.
Not modelled: TransactionConflict / TransactionInProgress errors (AWS answers a conflicting transaction with
them; here it waits its turn instead).
"""

from __future__ import annotations

import threading
from typing import Any

LOCK = threading.RLock()


def install() -> None:
    """Serialize moto's DynamoDB request handling in this process. Idempotent."""
    from moto.dynamodb.responses import DynamoHandler

    if getattr(DynamoHandler.call_action, "_localaws", False):
        return
    original = DynamoHandler.call_action

    def call_action(self: Any) -> Any:
        with LOCK:
            return original(self)

    call_action._localaws = True  # type: ignore[attr-defined]
    DynamoHandler.call_action = call_action  # type: ignore[method-assign]
