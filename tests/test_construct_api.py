"""OrchestratorApi in a stack of its own: what it synthesizes (function, layer, URLs, alias, policies), its grants,
the AWS limits it refuses, and the local AWS creating it from the synthesized JSON in moto.

The dependency layer's cache is a temporary directory seeded with a small zip under the real cache key: these
tests check the construct's wiring and its cache lookup, so they run no pip. tests/test_layer.py builds the real
layer (one pip run per session) and checks its contents.
"""

from __future__ import annotations

import json
import re
import shutil
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from cdktf import TerraformStack, Testing

from localaws.resources import create
from localaws.tfjson import Resolver, UnsupportedTerraform, load_stacks, resource_order
from modules.api import HANDLER, OrchestratorApi, code_sources
from modules.assets import build_zip
from modules.function import LOG_ACTIONS, FunctionSettings
from modules.iam import Role
from modules.layer import REQUIREMENTS, cache_key, hashed
from tests.infra_helpers import assert_grant, fresh_stack, one, policy_statements, refusal, resources, synth

WHERE = {"region": "us-east-1", "account": "123456789012"}
FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:orchestrator-test"
ALIAS_ARN = f"{FUNCTION_ARN}:admin"


@pytest.fixture(scope="module")
def layer_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding one zip under the key the default layer (arm64, python 3.11) looks up."""
    cache, content = tmp_path_factory.mktemp("layers"), tmp_path_factory.mktemp("layer-content")
    (content / "python").mkdir()
    (content / "python" / "seeded.py").write_text("SEEDED = True\n")
    build_zip(cache / f"{cache_key(REQUIREMENTS.read_bytes(), 'arm64', '3.11')}.zip", [(content, "python")])
    return cache


SETTINGS = {f.name for f in fields(FunctionSettings)}


def api_in(stack: TerraformStack, cache: Path, **props: Any) -> OrchestratorApi:
    """The API; `props` are OrchestratorApi's or its FunctionSettings' (by field name)."""
    role = Role(stack, "api-role", name="api-role", assumed_by="lambda.amazonaws.com", description="The API's")
    props = {
        "name": "orchestrator-test",
        "role": role,
        "environment": {"ORCHESTRATOR_AUTH": "iam", "TASK_QUEUE_URL": "https://sqs.example/q"},
        **WHERE,
        "submit_policy_name": "orchestrator-test-submit",
        "admin_policy_name": "orchestrator-test-admin",
        "layer_cache_dir": cache,
        **props,
    }
    settings = FunctionSettings(**{k: v for k, v in props.items() if k in SETTINGS})
    return OrchestratorApi(stack, "api", settings=settings, **{k: v for k, v in props.items() if k not in SETTINGS})


@pytest.fixture(scope="module")
def api(layer_cache: Path) -> OrchestratorApi:
    return api_in(fresh_stack("api"), layer_cache)


@pytest.fixture(scope="module")
def doc(api: OrchestratorApi) -> dict[str, Any]:
    return synth(TerraformStack.of(api))


def address(doc: dict[str, Any], rtype: str) -> str:
    (name,) = doc["resource"][rtype]
    return f"{rtype}.{name}"


def test_function_is_arm64_published_with_the_layer_and_its_log_group_first(doc: dict[str, Any]) -> None:
    fn = one(doc, "aws_lambda_function")
    assert (fn["handler"], fn["runtime"], fn["memory_size"], fn["timeout"]) == (HANDLER, "python3.11", 512, 29)
    assert fn["architectures"] == ["arm64"]
    assert fn["publish"] is True
    assert fn["layers"] == [f"${{{address(doc, 'aws_lambda_layer_version')}.arn}}"]
    assert fn["depends_on"] == [address(doc, "aws_cloudwatch_log_group")]
    assert "reserved_concurrent_executions" not in fn
    logs = one(doc, "aws_cloudwatch_log_group")
    assert (logs["name"], logs["retention_in_days"]) == ("/aws/lambda/orchestrator-test", 365)


def test_layer_is_the_cached_zip_for_its_key(doc: dict[str, Any], layer_cache: Path) -> None:
    layer = one(doc, "aws_lambda_layer_version")
    cached = layer_cache / f"{cache_key(REQUIREMENTS.read_bytes(), 'arm64', '3.11')}.zip"
    assert layer["layer_name"] == "orchestrator-test-deps"
    assert (layer["compatible_architectures"], layer["compatible_runtimes"]) == (["arm64"], ["python3.11"])
    assert layer["filename"].endswith(f"/{cached.name}")
    assert layer["source_code_hash"] == hashed(cached).base64_sha256


def test_both_urls_use_aws_iam_without_cors_and_the_admin_url_is_the_alias(doc: dict[str, Any]) -> None:
    fn_name = f"${{{address(doc, 'aws_lambda_function')}.function_name}}"
    alias = one(doc, "aws_lambda_alias")
    assert alias == {
        "name": "admin",
        "function_name": fn_name,
        "function_version": f"${{{address(doc, 'aws_lambda_function')}.version}}",
    }
    urls = sorted(resources(doc, "aws_lambda_function_url"), key=lambda u: "qualifier" in u)
    assert urls == [
        {"authorization_type": "AWS_IAM", "function_name": fn_name},
        {
            "authorization_type": "AWS_IAM",
            "function_name": fn_name,
            "qualifier": f"${{{address(doc, 'aws_lambda_alias')}.name}}",
        },
    ]


def url_policy(resources: list[str]) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["lambda:InvokeFunctionUrl"],
                "Resource": resources,
                "Condition": {"StringEquals": {"lambda:FunctionUrlAuthType": "AWS_IAM"}},
            },
            {
                "Effect": "Allow",
                "Action": ["lambda:InvokeFunction"],
                "Resource": resources,
                "Condition": {"Bool": {"lambda:InvokedViaFunctionUrl": "true"}},
            },
        ],
    }


def test_submit_and_admin_policies_are_exactly_url_invokes(doc: dict[str, Any]) -> None:
    submit = one(doc, "aws_iam_policy", name="orchestrator-test-submit")
    admin = one(doc, "aws_iam_policy", name="orchestrator-test-admin")
    assert json.loads(submit["policy"]) == url_policy([FUNCTION_ARN])
    assert json.loads(admin["policy"]) == url_policy([FUNCTION_ARN, ALIAS_ARN])


def test_code_zip_is_the_orchestrator_and_the_core_modules_it_imports(api: OrchestratorApi) -> None:
    names = zipfile.ZipFile(api.code.bundle.path).namelist()
    core = sorted(n for n in names if n.startswith("core/"))
    assert core == sorted(package for _, package in code_sources() if package.startswith("core/"))
    assert {"core/store.py", "core/task_types.json", "orchestrator/lambda_handler.py"} <= set(names)
    assert {n.split("/")[0] for n in names} == {"core", "orchestrator"}  # the packages are the layer's


def test_generic_grant_and_log_grant(api: OrchestratorApi) -> None:
    stack = TerraformStack.of(api)
    assert_grant(stack, lambda role: api.grant(role, "lambda:GetFunction"), [(["lambda:GetFunction"], [api.arn])])
    group = "arn:aws:logs:us-east-1:123456789012:log-group:/aws/lambda/orchestrator-test"
    assert_grant(stack, api.grant_logs, [(LOG_ACTIONS, [group, f"{group}:*"])])


def test_invoke_url_grant_is_what_the_managed_policy_allows(layer_cache: Path) -> None:
    stack = fresh_stack("grant")
    api = api_in(stack, layer_cache)
    caller = Role(stack, "caller", name="caller", assumed_by="lambda.amazonaws.com", description="Calls the API")
    added = api.grant_invoke_url(caller, admin=True)
    rendered = policy_statements(synth(stack), "caller")
    assert as_set(rendered) == as_set(url_policy([FUNCTION_ARN, ALIAS_ARN])["Statement"])
    assert as_set([st.render() for st in added]) == as_set(rendered)


def as_set(statements: list[dict[str, Any]]) -> set[str]:
    """Statements compared whatever their order (a role sorts its merged statements by their conditions)."""
    return {json.dumps(st, sort_keys=True) for st in statements}


@pytest.mark.parametrize(
    ("props", "line"),
    [
        ({"name": "x" * 65}, f"name={'x' * 65!r} is not 1-64 characters of A-Za-z0-9_- (Lambda FunctionName)"),
        ({"architecture": "arm"}, "architecture='arm' is not one of arm64, x86_64 (Lambda Architectures)"),
        ({"runtime": "nodejs20.x"}, "runtime='nodejs20.x' is not a Python runtime (python3.N)"),
        ({"memory_mb": 64}, "memory_mb=64 is outside 128..10240 (Lambda MemorySize)"),
        ({"timeout_seconds": 901}, "timeout_seconds=901 is outside 1..900 (Lambda Timeout)"),
        ({"reserved_concurrency": -1}, "reserved_concurrency=-1 is outside 0.. (Lambda ReservedConcurrentExecutions)"),
        ({"log_retention_days": 2}, "log_retention_days=2 is not one of 0, 1, 3, 5, 7, 14, 30, 60, 90, 120, 150"),
        ({"environment": {"AWS_REGION": "x"}}, "environment: AWS_REGION is reserved by the Lambda runtime"),
        ({"environment": {"1X": "x"}}, "environment='1X' is not an environment variable name"),
        ({"submit_policy_name": "a b"}, "submit_policy_name='a b' is not 1-128 characters of A-Za-z0-9+=,.@_-"),
        ({"admin_policy_name": ""}, "admin_policy_name='' is not 1-128 characters of A-Za-z0-9+=,.@_-"),
    ],
)
def test_refuses_what_aws_would(layer_cache: Path, props: dict[str, Any], line: str) -> None:
    assert refusal(lambda stack: api_in(stack, layer_cache, **props)).startswith(f"bad/api: {line}")


# --- the local AWS builds it from the synthesized JSON ---


@pytest.fixture
def created(moto_endpoint: str, layer_cache: Path) -> Iterator[tuple[dict[str, dict[str, Any]], Any]]:
    """Every resource of a fresh stack holding the construct, created in a freshly reset moto, in reference order."""
    import boto3

    urllib.request.urlopen(urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST"), timeout=10)
    stack = fresh_stack("api-local")
    api_in(stack, layer_cache)
    outdir = Path(Testing.full_synth(stack))
    (built,) = load_stacks(outdir).values()
    session = boto3.session.Session(region_name="us-east-1")
    clients: dict[str, Any] = {}

    def client(service: str) -> Any:
        return clients.setdefault(service, session.client(service, endpoint_url=moto_endpoint))

    resolver = Resolver()
    for res in resource_order(built):
        args = resolver.resolve(built.name, res.body)
        resolver.attributes[res.key] = create(res.type, client, args, built.directory, res.key)
    yield resolver.attributes, client
    shutil.rmtree(outdir)


def of_type(attributes: dict[str, dict[str, Any]], rtype: str) -> list[dict[str, Any]]:
    return [attrs for key, attrs in attributes.items() if key.split("/", 1)[1].startswith(f"{rtype}.")]


def test_local_aws_creates_function_layer_alias_urls_and_policies(created: Any) -> None:
    attributes, client = created
    lam = client("lambda")
    (layer,) = of_type(attributes, "aws_lambda_layer_version")
    fn = lam.get_function(FunctionName="orchestrator-test")["Configuration"]
    assert [x["Arn"] for x in fn["Layers"]] == [layer["arn"]]
    assert fn["Architectures"] == ["arm64"]
    (function,) = of_type(attributes, "aws_lambda_function")
    assert function["version"] == "1"
    assert lam.get_alias(FunctionName="orchestrator-test", Name="admin")["FunctionVersion"] == "1"
    versions = lam.list_layer_versions(LayerName="orchestrator-test-deps")["LayerVersions"]
    assert [v["CompatibleArchitectures"] for v in versions] == [["arm64"]]

    plain, admin = sorted(of_type(attributes, "aws_lambda_function_url"), key=lambda u: "qualifier" in u)
    own = lam.get_function_url_config(FunctionName="orchestrator-test")
    assert (own["AuthType"], own["FunctionUrl"]) == ("AWS_IAM", plain["function_url"])  # the alias's did not replace it
    assert re.fullmatch(r"https://[a-z0-9]{32}\.lambda-url\.us-east-1\.on\.aws/", admin["function_url"])
    assert admin["function_arn"].endswith(":function:orchestrator-test:admin")

    iam = client("iam")
    for managed in of_type(attributes, "aws_iam_policy"):
        version = iam.get_policy(PolicyArn=managed["arn"])["Policy"]["DefaultVersionId"]
        document = iam.get_policy_version(PolicyArn=managed["arn"], VersionId=version)["PolicyVersion"]["Document"]
        stored = json.loads(document) if isinstance(document, str) else document
        want = [FUNCTION_ARN, ALIAS_ARN] if managed["name"].endswith("admin") else [FUNCTION_ARN]
        assert stored == url_policy(want)


def test_a_url_argument_the_harness_does_not_model_is_an_error() -> None:
    with pytest.raises(UnsupportedTerraform, match=r"\['cors'\] of aws_lambda_function_url are not modelled"):
        create("aws_lambda_function_url", lambda _: None, {"function_name": "f", "cors": {}}, Path(), "here")
