"""Resource-level IAM authorization for moto (5.2.5), for the least-privilege tests' own server process only.

Why this exists: moto authorizes a request as (action, resource), but for most services it knows only resource
"*": `BaseResponse.call_action` asks the handler's `_determine_resource()`, which only SQS, IAM and STS define
(S3 has its own bucket/object ARN path). A policy statement whose Resource is a specific ARN never matches "*" in
moto's matcher (`IAMPolicyStatement._match`), so with stock moto every ARN-scoped grant for DynamoDB, EC2, SSM and
CloudWatch Logs is refused, and a correct least-privilege policy would look too narrow. `install()` teaches the
response classes of those four services the ARN(s) each request really touches, the way IAM evaluates them:

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
Anything else keeps moto's "*".

SQS keeps moto's own resource (the queue ARN) and, like the four above, gets its errors in the shape its protocol
needs: stock moto answers every refusal, unknown key or bad signature with an XML body, which botocore cannot parse
for the JSON-protocol services (DynamoDB, SSM, Logs, SQS): the client saw error code "403" with the XML as its
message. Here a refusal is what AWS sends: DynamoDB/SSM/Logs `AccessDeniedException` (400), SQS `AccessDenied`
(403), EC2 `UnauthorizedOperation` (403), each message naming the action and the resource; an unknown key is
`UnrecognizedClientException` / `InvalidClientTokenId` / `AuthFailure`.

The patch changes behaviour only once moto enforces (request count past INITIAL_NO_AUTH_ACTION_COUNT); before that
a request is counted once, as in stock moto. It is applied by `localaws.authserver` in its own process, never in
the session moto server the other tests share.

Not modelled (moto does not either): conditions with request context keys, resource-based policies on these
services, permission boundaries, SCPs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import cache
from typing import Any

Target = tuple[str | None, str]  # (IAM action to check instead of the request's own, or None; resource ARN)

_TRANSACT_ACTIONS = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
    "Get": "GetItem",
}
_INSTANCE_ACTIONS = {"StartInstances", "StopInstances", "RebootInstances", "TerminateInstances"}
_LOG_STREAM_ACTIONS = {"PutLogEvents", "GetLogEvents"}
_installed: list[bool] = []


def _arn(self: Any, service: str, resource: str) -> str:
    from moto.utilities.utils import get_partition

    return f"arn:{get_partition(self.region)}:{service}:{self.region}:{self.current_account}:{resource}"


def _params(self: Any) -> dict[str, Any]:
    """The request's parameters: moto's parsed ones where the handler has them, else the JSON body."""
    parsed = getattr(self, "params", None)
    if parsed:
        return dict(parsed)
    import json

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
                out.append((_TRANSACT_ACTIONS[kind], table(body["TableName"])))
        return out
    if action == "TransactGetItems":
        return [("GetItem", table(e["Get"]["TableName"])) for e in p.get("TransactItems", [])]
    if action in ("BatchGetItem", "BatchWriteItem"):
        return [(None, table(name)) for name in sorted(p.get("RequestItems", {}))]
    if p.get("TableName"):
        arn = table(p["TableName"])
        if action in ("Query", "Scan") and p.get("IndexName"):
            arn += f"/index/{p['IndexName']}"
        return [(None, arn)]
    if p.get("ResourceArn"):
        return [(None, str(p["ResourceArn"]))]
    return [(None, "*")]


def ec2_targets(self: Any, resource: str) -> list[Target]:
    if self._get_action() not in _INSTANCE_ACTIONS:
        return [(None, "*")]
    ids = _params(self).get("InstanceIds") or ["*"]
    return [(None, _arn(self, "ec2", f"instance/{i}")) for i in ids]


def ssm_targets(self: Any, resource: str) -> list[Target]:
    p = _params(self)
    names: Iterable[str] = p.get("Names") or ([p["Name"]] if p.get("Name") else [])
    if not names and p.get("Path"):
        names = [p["Path"]]
    out: list[Target] = [(None, _arn(self, "ssm", "parameter/" + str(n).lstrip("/"))) for n in names]
    return out or [(None, "*")]


def logs_targets(self: Any, resource: str) -> list[Target]:
    p = _params(self)
    group = p.get("logGroupName")
    if not group:
        return [(None, "*")]
    if self._get_action() in _LOG_STREAM_ACTIONS and p.get("logStreamName"):
        return [(None, _arn(self, "logs", f"log-group:{group}:log-stream:{p['logStreamName']}"))]
    return [(None, _arn(self, "logs", f"log-group:{group}"))]


def sqs_targets(self: Any, resource: str) -> list[Target]:
    return [(None, resource)]  # moto's own `_determine_resource`: the queue ARN


# (service -> (code, HTTP status)) for a refusal, an unknown key and a bad signature, as AWS answers them.
_ERRORS: dict[str, dict[str, tuple[str, int]]] = {
    "ec2": {"denied": ("UnauthorizedOperation", 403), "key": ("AuthFailure", 401), "signature": ("AuthFailure", 401)},
    "sqs": {
        "denied": ("AccessDenied", 403),
        "key": ("InvalidClientTokenId", 403),
        "signature": ("SignatureDoesNotMatch", 403),
    },
}
_JSON_ERRORS = {
    "denied": ("AccessDeniedException", 400),
    "key": ("UnrecognizedClientException", 400),
    "signature": ("InvalidSignatureException", 400),
}  # DynamoDB, SSM, CloudWatch Logs


def _error(service: str, kind: str, message: str) -> Exception:
    from moto.core.exceptions import JsonRESTError, _RESTError

    code, status = _ERRORS.get(service, _JSON_ERRORS)[kind]
    err = _RESTError(code, message) if service == "ec2" else JsonRESTError(code, message)
    err.code = status
    return err


@cache
def _request_class(action: str | None) -> type:
    """moto's IAMRequest, checking `action` instead of the request's own, and refusing the way AWS does."""
    from moto.iam.access_control import IAMRequest

    class ResourceIAMRequest(IAMRequest):
        def __init__(self, **kwargs: Any) -> None:
            if action is not None:
                kwargs["action"] = action
            super().__init__(**kwargs)
            self._resource = "*"

        def check_action_permitted(self, resource: str) -> None:
            self._resource = resource
            super().check_action_permitted(resource)

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
        for action, arn in targets_of(self, resource) or [(None, "*")]:
            self._authenticate_and_authorize_action(_request_class(action), arn)

    return authorize


def install() -> None:
    """Patch the five response classes (idempotent). Call before the server handles its first request."""
    if _installed:
        return
    from moto.dynamodb.responses import DynamoHandler
    from moto.ec2.responses import EC2Response
    from moto.logs.responses import LogsResponse
    from moto.sqs.responses import SQSResponse
    from moto.ssm.responses import SimpleSystemManagerResponse

    for cls, targets_of in (
        (DynamoHandler, dynamodb_targets),
        (EC2Response, ec2_targets),
        (SimpleSystemManagerResponse, ssm_targets),
        (LogsResponse, logs_targets),
        (SQSResponse, sqs_targets),
    ):
        cls._authenticate_and_authorize_normal_action = _authorizer(targets_of)  # type: ignore[method-assign]
    _installed.append(True)
