"""localaws/dynamodb_atomic.py: racing conditional transactions on one key, as AWS applies them: one wins."""

from __future__ import annotations

import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
from botocore.exceptions import ClientError


def test_racing_transactions_on_one_key_let_exactly_one_through(moto_endpoint: str) -> None:
    ddb = boto3.client("dynamodb", endpoint_url=moto_endpoint, region_name="us-east-1")
    table = f"race-{uuid.uuid4().hex[:8]}"
    ddb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    # A table of some size: moto copies every table a transaction touches, which is where racers overlap.
    for i in range(300):
        ddb.put_item(TableName=table, Item={"pk": {"S": f"filler-{i}"}, "blob": {"S": "x" * 200}})

    def claim(n: int) -> bool:
        try:
            ddb.transact_write_items(
                TransactItems=[
                    {
                        "Put": {
                            "TableName": table,
                            "Item": {"pk": {"S": "marker"}, "ref": {"S": f"task-{n}"}},
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    },
                    {"Put": {"TableName": table, "Item": {"pk": {"S": f"task-{n}"}}}},
                ]
            )
            return True
        except ClientError as err:
            assert err.response["Error"]["Code"] == "TransactionCanceledException", err
            return False

    # The server runs in this process: switching threads every microsecond makes racers interleave inside moto's
    # handling as a loaded machine does (without the model, two or more transactions pass their condition).
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            won = list(pool.map(claim, range(24)))
    finally:
        sys.setswitchinterval(interval)
    marker: dict[str, Any] = ddb.get_item(TableName=table, Key={"pk": {"S": "marker"}})["Item"]
    tasks = [
        item["pk"]["S"]
        for page in ddb.get_paginator("scan").paginate(TableName=table)
        for item in page["Items"]
        if item["pk"]["S"].startswith("task-")
    ]
    assert sum(won) == 1, won
    assert tasks == [marker["ref"]["S"]]  # the winner's whole transaction, and nothing of the losers'
    ddb.delete_table(TableName=table)
