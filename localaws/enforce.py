"""Resource-level IAM authorization for moto (5.2.5), for the least-privilege tests' own server process only.

Why this exists: moto authorizes a request as (action, resource), but for most services it knows only resource
"*": `BaseResponse.call_action` asks the handler's `_determine_resource()`, which only SQS, IAM and STS define
(S3 has its own bucket/object ARN path), and IAM's answers "*" for a role that does not exist yet. A policy
statement whose Resource is a specific ARN never matches "*" in moto's matcher (`IAMPolicyStatement._match`), so with
stock moto every ARN-scoped grant for DynamoDB, EC2, SSM, CloudWatch Logs, Lambda and IAM itself is refused, and a
correct least-privilege policy would look too narrow. And moto ignores every Condition of an identity policy (it
passes no request context, so a condition has no value to fail on), and permissions boundaries altogether, so a
policy that relies on them would look wider than it is. `install()` teaches the response classes of those six
services and of SQS the ARN(s) each request really touches, and evaluates the caller's policies itself (`evaluate`).

What is modelled, exactly:

Resources, per request, the way IAM evaluates them:
- DynamoDB: `table/<TableName>`, or `table/<TableName>/index/<IndexName>` for Query/Scan on an index.
  TransactWriteItems / TransactGetItems are not IAM actions: AWS authorizes each entry as its underlying action
  (Put -> dynamodb:PutItem, Update -> UpdateItem, Delete -> DeleteItem, ConditionCheck -> ConditionCheckItem,
  Get -> GetItem) on that entry's table, and the request fails if any entry is refused. That is what we check.
  BatchGetItem / BatchWriteItem are IAM actions of their own: checked once per table named.
- EC2 Start/Stop/Reboot/TerminateInstances: one `instance/<id>` ARN per id, each checked (EC2 refuses the whole
  call if any instance is refused). Describe* stays "*" (EC2 has no resource-level permissions for it).
- SSM GetParameter(s)/PutParameter/DeleteParameter(s)/GetParameterHistory: `parameter/<name>` (a leading "/" is
  not doubled); GetParametersByPath: `parameter/<path>`.
- CloudWatch Logs: `log-group:<name>`; PutLogEvents/GetLogEvents: `log-group:<name>:log-stream:<stream>`.
- IAM: `role/<path><RoleName>` for every action naming a role (for CreateRole, the ARN the new role will have),
  except Add/RemoveRoleFromInstanceProfile: `instance-profile/<path><name>`, as for every other action
  naming an instance profile; `policy/...` for actions naming a managed policy (PolicyArn, or CreatePolicy's new
  one); `user/<path><UserName>` for actions naming a user. Dependent checks AWS makes on top: CreateRole with Tags
  also needs iam:TagRole, CreateInstanceProfile with Tags iam:TagInstanceProfile, AddRoleToInstanceProfile
  iam:PassRole on the role (IAM API Reference, AddRoleToInstanceProfile).
- Lambda: `function:<name>` for actions naming a function; the API's Invoke is the IAM action
  lambda:InvokeFunction. CreateFunction, and UpdateFunctionConfiguration with a Role, also need iam:PassRole on
  that role, with iam:PassedToService = lambda.amazonaws.com.
Anything else keeps moto's "*".

Request context keys, and nothing else: every other key is absent from the request, as AWS treats a key it does
not send (see conditions below):
- iam:PermissionsBoundary, for the role actions that take it (Service Authorization Reference, IAM:
  AttachRolePolicy, CreateRole, DeleteRole, DeleteRolePermissionsBoundary, DeleteRolePolicy, DetachRolePolicy,
  PutRolePermissionsBoundary, PutRolePolicy, UpdateAssumeRolePolicy, UpdateRole, UpdateRoleDescription): for
  CreateRole and PutRolePermissionsBoundary the boundary the request sets (absent when CreateRole sets none), for the
  others the boundary the role carries (absent when it carries none).
- iam:PolicyARN, for AttachRolePolicy/DetachRolePolicy: the request's PolicyArn.
- iam:PassedToService, for the iam:PassRole checks above that pass a role to Lambda.

Policy evaluation: `evaluate` (localaws/iam_eval.py, which says exactly what it models), for every request of these
seven services.

Permissions boundaries: a session of a role that carries one (sts:AssumeRole) gets an action only if the boundary
also allows it (and nothing the boundary denies). IAM users in moto have no boundary. Resource-based policies
(bucket, queue, key, function policies), session policies and SCPs are not evaluated; nor are the conditions of
trust policies (moto's own AssumeRole check stays), or anything for STS, which keeps moto's evaluation.

S3: moto's own resource (the bucket, or bucket/key) and action, decided by `evaluate` with one request context key,
`s3:prefix` for ListBucket (`s3_context`), so a ListBucket grant conditioned on a prefix lists only under it.

The errors are what AWS sends, in the shape each protocol needs (stock moto answers every refusal, unknown key or
bad signature with an XML body, which botocore cannot parse for the JSON-protocol services): DynamoDB/SSM/Logs
`AccessDeniedException` (400), SQS `AccessDenied` (403), EC2 `UnauthorizedOperation` (403), IAM `AccessDenied`
(403, XML), Lambda `AccessDeniedException` (403), each message naming the action and the resource; an unknown key is
`UnrecognizedClientException` / `InvalidClientTokenId` / `AuthFailure`.

The patch changes behaviour only once moto enforces (request count past INITIAL_NO_AUTH_ACTION_COUNT); before that
a request is counted once, as in stock moto. It is applied by `localaws.authserver` in its own process, never in
the session moto server the other tests share.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from functools import cache
from types import MappingProxyType
from typing import Any, NamedTuple
from urllib.parse import unquote

from localaws.iam_eval import ALLOW, evaluate


class Target(NamedTuple):
    """One check a request needs: `action` instead of the request's own (None: its own; "svc:Name" for another
    service's, as iam:PassRole), on `resource`, with these request context keys."""

    action: str | None
    resource: str
    context: Mapping[str, str] = MappingProxyType({})


_TRANSACT_ACTIONS = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
    "Get": "GetItem",
}
_INSTANCE_ACTIONS = {"StartInstances", "StopInstances", "RebootInstances", "TerminateInstances"}
_LOG_STREAM_ACTIONS = {"PutLogEvents", "GetLogEvents"}
# The role actions whose iam:PermissionsBoundary is the boundary the role carries (the module docstring's list);
# CreateRole and PutRolePermissionsBoundary take the request's instead.
_CARRIED_BOUNDARY_ACTIONS = {
    "AttachRolePolicy",
    "DeleteRole",
    "DeleteRolePermissionsBoundary",
    "DeleteRolePolicy",
    "DetachRolePolicy",
    "PutRolePolicy",
    "UpdateAssumeRolePolicy",
    "UpdateRole",
    "UpdateRoleDescription",
}
_PROFILE_ROLE_ACTIONS = {"AddRoleToInstanceProfile", "RemoveRoleFromInstanceProfile"}
_LAMBDA_ACTIONS = {"Invoke": "InvokeFunction"}  # API operation -> IAM action, where they differ
_LAMBDA_FUNCTION = re.compile(r"/functions/([^/?]+)")
_context: ContextVar[Mapping[str, str]] = ContextVar("request_context", default=MappingProxyType({}))
_installed: list[bool] = []


def _document(policy: Any) -> dict[str, Any]:
    from moto.iam.access_control import IAMPolicy

    return dict(IAMPolicy(policy)._policy_json)


def _boundary_of(access_key: Any) -> dict[str, Any] | None:
    """The boundary document of the role behind an assumed-role session, if that role carries one."""
    from moto.iam.access_control import AssumedRoleAccessKey

    if not isinstance(access_key, AssumedRoleAccessKey):
        return None
    backend = access_key.backend
    boundary = backend.get_role(access_key._owner_role_name).permissions_boundary_arn
    return _document(backend.get_policy(boundary)) if boundary else None


# -- the resources and context of each request -------------------------------------------------------------------
def _arn(self: Any, service: str, resource: str) -> str:
    from moto.utilities.utils import get_partition

    return f"arn:{get_partition(self.region)}:{service}:{self.region}:{self.current_account}:{resource}"


def _params(self: Any) -> dict[str, Any]:
    """The request's parameters: moto's parsed ones where the handler has them, else the JSON body."""
    parsed = getattr(self, "params", None)
    if parsed:
        return dict(parsed)
    try:
        body = json.loads(self.body) if isinstance(self.body, (str, bytes)) and self.body else {}
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def dynamodb_targets(self: Any, resource: str) -> list[Target]:
    action, p = self._get_action(), _params(self)

    def table(name: str) -> str:
        return _arn(self, "dynamodb", f"table/{name}")

    if action == "TransactWriteItems":
        out: list[Target] = []
        for entry in p.get("TransactItems", []):
            for kind, body in entry.items():
                out.append(Target(_TRANSACT_ACTIONS[kind], table(body["TableName"])))
        return out
    if action == "TransactGetItems":
        return [Target("GetItem", table(e["Get"]["TableName"])) for e in p.get("TransactItems", [])]
    if action in ("BatchGetItem", "BatchWriteItem"):
        return [Target(None, table(name)) for name in sorted(p.get("RequestItems", {}))]
    if p.get("TableName"):
        arn = table(p["TableName"])
        if action in ("Query", "Scan") and p.get("IndexName"):
            arn += f"/index/{p['IndexName']}"
        return [Target(None, arn)]
    if p.get("ResourceArn"):
        return [Target(None, str(p["ResourceArn"]))]
    return [Target(None, "*")]


def ec2_targets(self: Any, resource: str) -> list[Target]:
    if self._get_action() not in _INSTANCE_ACTIONS:
        return [Target(None, "*")]
    ids = _params(self).get("InstanceIds") or ["*"]
    return [Target(None, _arn(self, "ec2", f"instance/{i}")) for i in ids]


def ssm_targets(self: Any, resource: str) -> list[Target]:
    p = _params(self)
    names: Iterable[str] = p.get("Names") or ([p["Name"]] if p.get("Name") else [])
    if not names and p.get("Path"):
        names = [p["Path"]]
    out = [Target(None, _arn(self, "ssm", "parameter/" + str(n).lstrip("/"))) for n in names]
    return out or [Target(None, "*")]


def logs_targets(self: Any, resource: str) -> list[Target]:
    p = _params(self)
    group = p.get("logGroupName")
    if not group:
        return [Target(None, "*")]
    if self._get_action() in _LOG_STREAM_ACTIONS and p.get("logStreamName"):
        return [Target(None, _arn(self, "logs", f"log-group:{group}:log-stream:{p['logStreamName']}"))]
    return [Target(None, _arn(self, "logs", f"log-group:{group}"))]


def sqs_targets(self: Any, resource: str) -> list[Target]:
    return [Target(None, resource)]  # moto's own `_determine_resource`: the queue ARN


def _iam_arn(self: Any, kind: str, name: str, path: str | None) -> str:
    from moto.utilities.utils import get_partition

    return f"arn:{get_partition(self.region)}:iam::{self.current_account}:{kind}{path or '/'}{name}"


def _iam_role(self: Any, name: str) -> tuple[str, str | None]:
    """(ARN, the boundary it carries) of the role `name`, or of the one CreateRole is about to make."""
    from moto.iam.exceptions import NotFoundException

    try:
        role = self.backend.get_role(name)
    except NotFoundException:
        return _iam_arn(self, "role", name, self._get_param("Path")), None
    return str(role.arn), role.permissions_boundary_arn


def _iam_profile(self: Any, name: str) -> str:
    from moto.iam.exceptions import NotFoundException

    try:
        return str(self.backend.get_instance_profile(name).arn)
    except NotFoundException:
        return _iam_arn(self, "instance-profile", name, self._get_param("Path"))


def iam_targets(self: Any, resource: str) -> list[Target]:
    action, role_name = self._get_action(), self._get_param("RoleName")
    profile_name, policy_arn = self._get_param("InstanceProfileName"), self._get_param("PolicyArn")
    tagged = bool(self._get_param("Tags") or self._get_param("Tags.member.1.Key"))
    if role_name and action in _PROFILE_ROLE_ACTIONS:
        role_arn, _ = _iam_role(self, role_name)
        checks = [Target(None, _iam_profile(self, profile_name))]
        return checks + ([Target("iam:PassRole", role_arn)] if action == "AddRoleToInstanceProfile" else [])
    if role_name:
        role_arn, carried = _iam_role(self, role_name)
        context: dict[str, str] = {}
        if action in ("CreateRole", "PutRolePermissionsBoundary"):
            requested = self._get_param("PermissionsBoundary")
            if requested:
                context["iam:PermissionsBoundary"] = requested
        elif action in _CARRIED_BOUNDARY_ACTIONS and carried:
            context["iam:PermissionsBoundary"] = carried
        if policy_arn and action in ("AttachRolePolicy", "DetachRolePolicy"):
            context["iam:PolicyARN"] = policy_arn
        checks = [Target(None, role_arn, context)]
        return checks + ([Target("iam:TagRole", role_arn)] if action == "CreateRole" and tagged else [])
    if profile_name:
        profile_arn = _iam_profile(self, profile_name)
        tag = action == "CreateInstanceProfile" and tagged
        return [Target(None, profile_arn)] + ([Target("iam:TagInstanceProfile", profile_arn)] if tag else [])
    if policy_arn:
        return [Target(None, policy_arn)]
    if action == "CreatePolicy":
        return [Target(None, _iam_arn(self, "policy", self._get_param("PolicyName"), self._get_param("Path")))]
    if self._get_param("UserName"):
        return [Target(None, _iam_arn(self, "user", self._get_param("UserName"), self._get_param("Path")))]
    return [Target(None, "*")]


def lambda_targets(self: Any, resource: str) -> list[Target]:
    action = self._get_action()
    body = _params(self)
    found = _LAMBDA_FUNCTION.search(self.path or "")
    name = body.get("FunctionName") if action == "CreateFunction" else (unquote(found.group(1)) if found else None)
    as_action = f"lambda:{_LAMBDA_ACTIONS[action]}" if action in _LAMBDA_ACTIONS else None
    if not name:
        return [Target(as_action, "*")]
    function = name if name.startswith("arn:") else _arn(self, "lambda", f"function:{name.split(':')[0]}")
    checks = [Target(as_action, function)]
    if action in ("CreateFunction", "UpdateFunctionConfiguration") and body.get("Role"):
        checks.append(Target("iam:PassRole", str(body["Role"]), {"iam:PassedToService": "lambda.amazonaws.com"}))
    return checks


# -- refusals ----------------------------------------------------------------------------------------------------
# (service -> (code, HTTP status)) for a refusal, an unknown key and a bad signature, as AWS answers them.
_ERRORS: dict[str, dict[str, tuple[str, int]]] = {
    "ec2": {"denied": ("UnauthorizedOperation", 403), "key": ("AuthFailure", 401), "signature": ("AuthFailure", 401)},
    "sqs": {
        "denied": ("AccessDenied", 403),
        "key": ("InvalidClientTokenId", 403),
        "signature": ("SignatureDoesNotMatch", 403),
    },
    "iam": {
        "denied": ("AccessDenied", 403),
        "key": ("InvalidClientTokenId", 403),
        "signature": ("SignatureDoesNotMatch", 403),
    },
    "lambda": {
        "denied": ("AccessDeniedException", 403),
        "key": ("UnrecognizedClientException", 403),
        "signature": ("InvalidSignatureException", 403),
    },
}
_JSON_ERRORS = {
    "denied": ("AccessDeniedException", 400),
    "key": ("UnrecognizedClientException", 400),
    "signature": ("InvalidSignatureException", 400),
}  # DynamoDB, SSM, CloudWatch Logs
_XML_SERVICES = {"ec2", "iam"}


def _error(service: str, kind: str, message: str) -> Exception:
    from moto.core.exceptions import JsonRESTError, _RESTError

    code, status = _ERRORS.get(service, _JSON_ERRORS)[kind]
    err = _RESTError(code, message) if service in _XML_SERVICES else JsonRESTError(code, message)
    err.code = status
    return err


def _permitted(access_key: Any, action: str, resource: str, context: Mapping[str, str]) -> bool:
    """The caller's policies allow it, and so does its permissions boundary where it has one."""
    documents = [_document(p) for p in access_key.collect_policies()]
    if evaluate(documents, action, resource, context) != ALLOW:
        return False
    boundary = _boundary_of(access_key)
    return boundary is None or evaluate([boundary], action, resource, context) == ALLOW


@cache
def _request_class(action: str | None) -> type:
    """moto's IAMRequest, checking `action` instead of the request's own (a bare name is of the request's service,
    "svc:Name" another's), deciding with `evaluate` and refusing the way AWS does."""
    from moto.iam.access_control import IAMRequest

    class ResourceIAMRequest(IAMRequest):
        def __init__(self, **kwargs: Any) -> None:
            if action is not None and ":" not in action:
                kwargs["action"] = action
            super().__init__(**kwargs)
            if action is not None and ":" in action:
                self._action = action
            self._resource = "*"

        def check_action_permitted(self, resource: str) -> None:
            self._resource = resource
            if self._action == "sts:GetCallerIdentity":  # AWS always allows it, whatever a policy says
                return
            if not _permitted(self._access_key, self._action, resource, _context.get()):
                self._raise_access_denied()
            if self._is_assuming_role_operation(resource) and not self._check_role_trust_relationship(resource):
                self._raise_access_denied()

        def _create_aws_request(self) -> Any:
            """moto signs an empty body as the request's parsed parameters (`self._body or self._data`), which
            fails every GET with path parameters (Lambda's GetFunctionConfiguration, GetAlias...): the signature
            covers the bytes sent, so a GET or DELETE without a body is signed as one. (For the query protocols
            (EC2, SQS, IAM) moto hands over the form as `_data` and no `_body`: those keep moto's way.)"""
            request = super()._create_aws_request()
            if self._method in ("GET", "DELETE", "HEAD") and not self._body:
                request.data = b""
            return request

        def _raise_access_denied(self) -> None:
            prefix = "You are not authorized to perform this operation. " if self._service == "ec2" else ""
            raise _error(
                self._service,
                "denied",
                f"{prefix}User: {self._access_key.arn} is not authorized to "
                f"perform: {self._action} on resource: {self._resource}",
            )

        def _raise_invalid_access_key(self, _: str) -> None:
            raise _error(self._service, "key", "The security token included in the request is invalid.")

        def _raise_signature_does_not_match(self) -> None:
            raise _error(
                self._service,
                "signature",
                "The request signature we calculated does not match the signature you provided.",
            )

    return ResourceIAMRequest


def _authorizer(targets_of: Callable[[Any, str], list[Target]]) -> Callable[..., None]:
    def authorize(self: Any, resource: str = "*") -> None:
        from moto import settings
        from moto.core.authorization import ActionAuthenticatorMixin

        if ActionAuthenticatorMixin.request_count < settings.INITIAL_NO_AUTH_ACTION_COUNT:
            self._authenticate_and_authorize_action(_request_class(None), resource)  # counts this request once
            return
        for target in targets_of(self, resource) or [Target(None, "*")]:
            token = _context.set(target.context)
            try:
                self._authenticate_and_authorize_action(_request_class(target.action), target.resource)
            finally:
                _context.reset(token)

    return authorize


def install() -> None:
    """Patch the seven response classes (idempotent). Call before the server handles its first request."""
    if _installed:
        return
    from moto.awslambda.responses import LambdaResponse
    from moto.dynamodb.responses import DynamoHandler
    from moto.ec2.responses import EC2Response
    from moto.iam.responses import IamResponse
    from moto.logs.responses import LogsResponse
    from moto.sqs.responses import SQSResponse
    from moto.ssm.responses import SimpleSystemManagerResponse

    for cls, targets_of in (
        (DynamoHandler, dynamodb_targets),
        (EC2Response, ec2_targets),
        (SimpleSystemManagerResponse, ssm_targets),
        (LogsResponse, logs_targets),
        (SQSResponse, sqs_targets),
        (IamResponse, iam_targets),
        (LambdaResponse, lambda_targets),
    ):
        cls._authenticate_and_authorize_normal_action = _authorizer(targets_of)  # type: ignore[method-assign]
    _install_s3()
    _installed.append(True)


def s3_context(action: str, path: str) -> dict[str, str]:
    """The request context of an S3 request: `s3:prefix` for ListBucket (ListObjects/ListObjectsV2), the `prefix`
    query parameter as sent, absent when the request names none (Amazon S3 User Guide, "Condition key examples":
    s3:prefix limits a ListBucket grant to keys under a prefix)."""
    from urllib.parse import parse_qs, urlsplit

    if action.lower() != "s3:listbucket":
        return {}
    prefix = parse_qs(urlsplit(path).query, keep_blank_values=True).get("prefix")
    return {"s3:prefix": prefix[0]} if prefix else {}


def _install_s3() -> None:
    """S3 requests evaluated by `evaluate` (conditions and boundaries included) instead of moto's matcher, which
    ignores every Condition: a ListBucket grant limited by s3:prefix would otherwise list the whole bucket."""
    from moto.iam.access_control import S3IAMRequest

    def check_action_permitted(self: Any, resource: str) -> None:
        if not _permitted(self._access_key, self._action, resource, s3_context(self._action, self._path)):
            self._raise_access_denied()

    S3IAMRequest.check_action_permitted = check_action_permitted  # type: ignore[method-assign]
