"""modules/props.py decides locally which values are tokens (TOKEN_MARKER, ints): held here to what the pinned
cdktf's Token.is_unresolved says, for every form a token takes in Python."""

from __future__ import annotations

from typing import Any

import pytest

from modules import props
from tests.infra_helpers import fresh_stack


def token_forms() -> list[Any]:
    from cdktf import Fn, Token
    from cdktf_cdktf_provider_aws.sqs_queue import SqsQueue

    queue = SqsQueue(fresh_stack(), "q", name="q")
    return [
        queue.arn,  # a string attribute
        f"{queue.arn}/*",  # a token inside text
        queue.visibility_timeout_seconds,  # a number attribute: a float
        Token.as_number(queue.arn),
        Token.as_list(queue.arn),  # a list token: one "#{TfToken[...]}" string
        Fn.join(",", [queue.name]),
        Token.as_string(queue.visibility_timeout_seconds),  # a number token as text
    ]


PLAIN = ["", "q", "${var.not_a_cdktf_token}", "arn:aws:sqs:us-east-1:123456789012:q", 0, 300, True, 2.5, [], {}]


def test_tokens_are_unknown_and_plain_values_known_as_cdktf_says() -> None:
    from cdktf import Token

    tokens = token_forms()
    for value in tokens:
        assert Token.is_unresolved(value)
        assert not props._known(value), value
    for value in PLAIN:
        assert not Token.is_unresolved(value)
        assert props._known(value), value


@pytest.mark.parametrize("value", ["${TfToken[TOKEN.1]}x", 300])
def test_the_local_answer_asks_no_round_trip_for_plain_text_and_ints(value: Any, monkeypatch: Any) -> None:
    from cdktf import Token

    asked: list[Any] = []
    monkeypatch.setattr(Token, "is_unresolved", lambda v: asked.append(v) or True)
    props._known("plain text")
    props._known(value)
    assert asked == ([value] if isinstance(value, str) else [])  # only text with the marker is asked about
