"""The orchestrator API as a Lambda function behind two function URLs with AWS_IAM auth, and the managed policies
that say who may call which.

Lambda checks each request's SigV4 signature and the caller's permissions before the function runs, so the
function trusts the caller ARN it is handed (orchestrator/identity.py). Two URLs make "is an admin" something AWS
proves too: the plain URL invokes the unqualified function, the admin URL invokes the `admin` alias, and only the
admin policy allows the alias. The app learns which one it serves from the invoked function ARN (it ends in
`:admin` through the admin URL), so a caller cannot claim admin rights it was not granted.

IAM (Control access to Lambda function URLs, https://docs.aws.amazon.com/lambda/latest/dg/urls-auth.html): with
AWS_IAM auth a caller of this account needs `lambda:InvokeFunctionUrl` in its identity policy, on the ARN the URL
belongs to (the function's, or the alias's `...:function:<name>:<alias>`, Using Lambda aliases,
https://docs.aws.amazon.com/lambda/latest/dg/using-aliases.html), and since October 2025 `lambda:InvokeFunction`
too. Each is conditioned so that it only works through a URL: `lambda:FunctionUrlAuthType` = AWS_IAM on the first,
`lambda:InvokedViaFunctionUrl` = true on the second (condition keys of InvokeFunctionUrl and InvokeFunction,
Service Authorization Reference, https://docs.aws.amazon.com/service-authorization/latest/reference/
list_awslambda.html). Without the second condition, the policy would let a caller Invoke the function directly
with an event it wrote itself, naming any caller ARN.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from cdktf_cdktf_provider_aws.iam_policy import IamPolicy
from cdktf_cdktf_provider_aws.lambda_alias import LambdaAlias
from cdktf_cdktf_provider_aws.lambda_function_url import LambdaFunctionUrl
from constructs import Construct

from core.contract import ADMIN_ALIAS
from modules.assets import ZipAsset, core_sources
from modules.config import ROOT
from modules.function import FunctionSettings, grant_logs, logged_function
from modules.iam import Role, Statement, arn, policy, render
from modules.layer import CACHE_DIR, PLATFORMS, DependencyLayer
from modules.props import check_in, check_pattern
from modules.resource import ResourceConstruct

HANDLER = "orchestrator.lambda_handler.handler"
AUTH_TYPE = "AWS_IAM"
URL_INVOKE = (("lambda:InvokeFunctionUrl",), {"StringEquals": {"lambda:FunctionUrlAuthType": AUTH_TYPE}})
URL_ONLY_INVOKE = (("lambda:InvokeFunction",), {"Bool": {"lambda:InvokedViaFunctionUrl": "true"}})
# IAM quotas (IAM User Guide, reference_iam-quotas): a managed policy name is 1-128 characters of A-Za-z0-9+=,.@_-.
POLICY_NAME = re.compile(r"[\w+=,.@-]{1,128}", re.ASCII)
POLICY_NAME_RULE = "1-128 characters of A-Za-z0-9+=,.@_- (IAM policy name)"
# Every call is a handful of DynamoDB, SQS, S3-presign and EC2 requests: 29 s bounds what a hung AWS call can cost
# and ends before the CLI's own 30 s client timeout (orchestrator/client.py), so the CLI sees Lambda's error.
DEFAULT_TIMEOUT_SECONDS = 29
DEFAULT_MEMORY_MB = 512


def code_sources() -> list[tuple[Path, str]]:
    """The function's code: orchestrator/ and exactly the core modules it imports (its dependencies are the layer)."""
    return [(ROOT, "orchestrator"), *core_sources([ROOT / "orchestrator"])]


class OrchestratorApi(ResourceConstruct):
    """The orchestrator API: a Python Lambda with its dependency layer, a plain and an admin function URL (AWS_IAM),
    its log group, and the two managed policies that let people call it.

    Args:
        settings: what the function runs with (modules/function.py FunctionSettings). Its name also names the layer
            (`<name>-deps`); its role's log grant is `grant_logs`, by name; its environment is the app's
            (core/contract.py ORCHESTRATOR); its runtime is the one the layer's wheels are built for. Unset memory_mb
            is 512 here (CPU share grows with memory, and the cold start imports FastAPI, pydantic and boto3), unset
            timeout_seconds 29 (a function URL waits up to 900); the default log retention, a year, is the API's audit
            trail (who submitted, cancelled and read which task). Required.
        region, account: where the function runs; the policies name its ARNs. Required.
        submit_policy_name, admin_policy_name: names of the managed policies allowing the plain URL, and the plain
            and the admin URL (1-128 characters of A-Za-z0-9+=,.@_-). Required.
        architecture: "arm64" or "x86_64" (AWS default x86_64). Default "arm64": cheaper per GB-second.
        layer_cache_dir: where the dependency layer's zips are cached (modules/layer.py). Default build/layers.
    """

    SERVICE = "lambda"

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        settings: FunctionSettings,
        region: str,
        account: str,
        submit_policy_name: str,
        admin_policy_name: str,
        architecture: str = "arm64",
        layer_cache_dir: Path = CACHE_DIR,
    ) -> None:
        super().__init__(scope, id)
        settings = settings.or_defaults(memory_mb=DEFAULT_MEMORY_MB, timeout_seconds=DEFAULT_TIMEOUT_SECONDS)
        settings.check(self)
        check_in(self, "architecture", architecture, tuple(PLATFORMS), "Lambda Architectures")
        check_pattern(self, "submit_policy_name", submit_policy_name, POLICY_NAME, POLICY_NAME_RULE)
        check_pattern(self, "admin_policy_name", admin_policy_name, POLICY_NAME, POLICY_NAME_RULE)
        name = settings.name
        self._name, self._region, self._account = name, region, account
        self.code = ZipAsset(self, "code", name="lambda-orchestrator", sources=code_sources())
        self.layer = DependencyLayer(
            self,
            "deps",
            name=f"{name}-deps",
            architecture=architecture,
            runtime=settings.runtime,
            cache_dir=layer_cache_dir,
        )
        wiring = self._code_and_wiring(architecture)
        self.log_group, self.function = logged_function(self, settings, handler=HANDLER, **wiring)
        self.arn = self.function.arn
        self.name = self.function.function_name
        self.version = self.function.version  # what `publish` made of the current code: the admin alias's version
        self.function_url, self.alias, self.admin_function_url = self._urls()
        self.url, self.admin_url = self.function_url.function_url, self.admin_function_url.function_url
        self.submit_policy = self._managed_policy("submit", submit_policy_name, admin=False)
        self.admin_policy = self._managed_policy("admin-policy", admin_policy_name, admin=True)
        self.submit_policy_arn, self.admin_policy_arn = self.submit_policy.arn, self.admin_policy.arn

    def _code_and_wiring(self, architecture: str) -> dict[str, Any]:
        """The settings that come from the construct's own parts: the code zip and the layer. `publish` makes each
        code change a new version, which the admin alias follows."""
        return {
            "filename": self.code.path,
            "source_code_hash": self.code.bundle.base64_sha256,
            "layers": [self.layer.arn],
            "architectures": [architecture],
            "publish": True,
        }

    def _urls(self) -> tuple[LambdaFunctionUrl, LambdaAlias, LambdaFunctionUrl]:
        """The plain URL (the unqualified function, i.e. $LATEST) and the admin URL (the `admin` alias, on the version
        `publish` made of the same code), both AWS_IAM and without CORS: callers are the CLI and scripts, no browser."""
        plain = LambdaFunctionUrl(self, "url", function_name=self.function.function_name, authorization_type=AUTH_TYPE)
        alias = LambdaAlias(
            self, "admin", name=ADMIN_ALIAS, function_name=self.function.function_name, function_version=self.version
        )
        admin = LambdaFunctionUrl(
            self,
            "admin-url",
            function_name=self.function.function_name,
            qualifier=alias.name,
            authorization_type=AUTH_TYPE,
        )
        return plain, alias, admin

    def _url_statements(self, *, admin: bool) -> list[Statement]:
        """Invoke through a URL, and only through one: the plain URL's ARN, and with `admin` the alias's too."""
        resources = (self.function_arn, self.admin_arn) if admin else (self.function_arn,)
        return [Statement(action, resources, condition) for action, condition in (URL_INVOKE, URL_ONLY_INVOKE)]

    def _managed_policy(self, id: str, name: str, *, admin: bool) -> IamPolicy:
        who = "and the admin URL" if admin else "URL"
        return IamPolicy(
            self,
            id,
            name=name,
            description=f"Call the orchestrator API {self._name} through its function {who}",
            policy=render(policy(self._url_statements(admin=admin))),
        )

    # -- attributes ------------------------------------------------------------------------------------------------
    @property
    def function_arn(self) -> str:
        """The unqualified function ARN, from region, account and name: the policies read as plain text."""
        return arn("lambda", f"function:{self._name}", region=self._region, account=self._account)

    @property
    def admin_arn(self) -> str:
        """The admin alias's ARN, `<function ARN>:admin`: the resource its function URL is authorized against."""
        return f"{self.function_arn}:{ADMIN_ALIAS}"

    # -- grants ----------------------------------------------------------------------------------------------------
    def grant_invoke_url(self, grantee: Role, *, admin: bool = False) -> list[Statement]:
        """What the submit (or, with `admin`, the admin) policy allows, in a role's own policy."""
        return [
            grantee.add(st.actions, st.resources, conditions=st.conditions) for st in self._url_statements(admin=admin)
        ]

    def grant_logs(self, grantee: Role) -> list[Statement]:
        """Write access to this function's log group (modules/function.py grant_logs), by name."""
        return grant_logs(grantee, region=self._region, account=self._account, function_name=self._name)
