"""Shared pytest fixtures.

`moto_endpoint` is one moto server per test session, bound to 127.0.0.1 on a free port and stopped by the
fixture itself. Runtime code talks to it over HTTP exactly as it would talk to AWS (boto3 honours
AWS_ENDPOINT_URL), so nothing in the code under test knows it is being tested.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Fake credentials for the local AWS stand-in; set before any boto3 client exists.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
# Node 20 is past jsii's end-of-support date: that banner has its own switch, naming the major version.
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    from localaws.server import moto_server

    with moto_server(quiet=False) as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def synthesized(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """environment name -> output dir of that environment synthesized in this process (once per session)."""
    from scripts.synth import GOLDEN_INPUTS, synthesize

    cache: dict[str, Path] = {}

    def get(environment: str) -> Path:
        if environment not in cache:
            out = tmp_path_factory.mktemp(f"synth-{environment}")
            cache[environment] = synthesize(environment, out, GOLDEN_INPUTS.get(environment))
        return cache[environment]

    return get


@pytest.fixture
def local_aws(moto_endpoint: str, synthesized):  # type: ignore[no-untyped-def]
    """A fresh local AWS (moto, 127.0.0.1) holding every resource of the synthesized `local` environment.

    The moto server is reset first, so each test starts from exactly what the stacks declare.
    """
    import urllib.request

    import localaws

    urllib.request.urlopen(urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST"), timeout=10)
    return localaws.build(synthesized("local"), moto_endpoint)


@pytest.fixture
def controller(local_aws):  # type: ignore[no-untyped-def]
    """The controller Lambda an app nudges after each submit, invoked asynchronously in-process (localaws.lambdas:
    moto cannot run a function without Docker); its worker thread stops with the test."""
    from localaws.lambdas import LocalController

    with LocalController(local_aws) as started:
        yield started
