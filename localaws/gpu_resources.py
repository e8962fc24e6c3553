"""Creators for the GPU host stack's resource types (modules/gpu.py GpuHost), registered with
localaws.resources.creator, and a reader for its one data source. Strict like localaws/resources.py: an argument,
nested block or block field that is not modelled is an error.

What moto 5.2.5 lacks, and is modelled here instead:
- SSM associations: moto has no CreateAssociation. `aws_ssm_association` checks what AWS would refuse (the document
  and version exist, the targets are InstanceIds of instances that exist) and records the association in the
  created attributes only (`instance_ids`, `name`, `document_version`); localaws/host.py reads them there to run
  the document on those instances, as the SSM agent would.
- Launch template instance profiles: moto's RunInstances ignores the template's IamInstanceProfile. `aws_instance`
  associates it after launch (AssociateIamInstanceProfile), so the instance has the profile AWS would give it.
- AWS's public parameters: moto serves only /aws/service/ami-amazon-linux-latest, ecs/optimized-ami and
  global-infrastructure, not /aws/service/deeplearning/. The `aws_ssm_parameter` reader answers a parameter of that
  path with MOTO_GPU_AMI, the Deep Learning AMI among moto's built-in images, which RunInstances then launches.

Data sources: localaws/tfjson.py resolves only terraform_remote_state. `DataResolver` (a Resolver) reads the data
sources in DATA_READERS (SSM parameters, and the region's availability zones for the fleet's group) before a stack's
resources and answers `${data.<type>.<name>.<attribute>}` from them.
Literal "${": Terraform reads "$${" in a JSON string as a literal "${" (the document's script holds shell ones);
`escape_literals` hides them from localaws/tfjson.py's reference scan and `DataResolver.resolve` writes them back.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from localaws.resources import Clients, _one, creator
from localaws.tfjson import Resolver, Stack, UnsupportedTerraform

LITERAL = "\x00literal-dollar\x00"  # stands for the "$" of an escaped "$${" between escape_literals and resolve
MOTO_GPU_AMI = "ami-dca37ea5"  # moto's "Deep Learning AMI Ubuntu Linux - 2.4_Oct2017" (root device /dev/sda1)
PUBLIC_DEEPLEARNING = "/aws/service/deeplearning/"


def _fields(block: Mapping[str, Any], allowed: Iterable[str], where: str) -> dict[str, Any]:
    unknown = sorted(set(block) - set(allowed))
    if unknown:
        raise UnsupportedTerraform(f"{where} field(s) {unknown} are not modelled")
    return dict(block)


def _tags(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]


# -- SSM ---------------------------------------------------------------------------------------------------------
@creator("aws_ssm_document", "name", "document_type", "document_format", "target_type", "content")
def _document(c: Clients, a: dict[str, Any], _: Path) -> dict[str, Any]:
    made = c("ssm").create_document(
        Name=a["name"],
        Content=a["content"],
        DocumentType=a["document_type"],
        DocumentFormat=a.get("document_format", "JSON"),
        TargetType=a.get("target_type", "/"),
    )["DocumentDescription"]
    where = c("ssm").meta.region_name
    account = c("sts").get_caller_identity()["Account"]
    return {
        "id": a["name"],
        "name": a["name"],
        "arn": f"arn:aws:ssm:{where}:{account}:document/{a['name']}",
        "latest_version": made["LatestVersion"],
        "default_version": made["DefaultVersion"],
    }


@creator("aws_ssm_association", "name", "association_name", "document_version", "targets")
def _association(c: Clients, a: dict[str, Any], _: Path) -> dict[str, Any]:
    """Modelled (moto has no associations): checked as CreateAssociation would, recorded in the attributes."""
    instance_ids: list[str] = []
    for target in a["targets"]:
        target = _fields(target, ("key", "values"), "aws_ssm_association targets")
        if target["key"] != "InstanceIds":
            raise UnsupportedTerraform(f"association target key {target['key']!r} is not modelled (InstanceIds only)")
        instance_ids += target["values"]
    version = str(a.get("document_version", "$DEFAULT"))
    c("ssm").describe_document(Name=a["name"], **({} if version.startswith("$") else {"DocumentVersion": version}))
    c("ec2").describe_instances(InstanceIds=instance_ids)  # InvalidInstanceID.NotFound as AWS would answer
    association_id = str(uuid.uuid4())
    return {
        "id": association_id,
        "association_id": association_id,
        "association_name": a.get("association_name", ""),
        "name": a["name"],
        "document_version": version,
        "instance_ids": instance_ids,
    }


def read_ssm_parameter(c: Clients, a: Mapping[str, Any]) -> dict[str, Any]:
    """`data "aws_ssm_parameter"`: GetParameter, or MOTO_GPU_AMI for AWS's public Deep Learning AMI parameters."""
    a = _fields(a, ("name",), "data aws_ssm_parameter")
    name = a["name"]
    if name.startswith(PUBLIC_DEEPLEARNING):
        value, arn = MOTO_GPU_AMI, f"arn:aws:ssm:{c('ssm').meta.region_name}::parameter{name}"
    else:
        found = c("ssm").get_parameter(Name=name)["Parameter"]
        value, arn = found["Value"], found["ARN"]
    return {"id": name, "name": name, "arn": arn, "value": value, "insecure_value": value}


# -- EC2 ---------------------------------------------------------------------------------------------------------
RULE_FIELDS = (
    "description",
    "protocol",
    "from_port",
    "to_port",
    "cidr_blocks",
    "ipv6_cidr_blocks",
    "prefix_list_ids",
    "security_groups",
    "self",
)


def _permission(rule: Mapping[str, Any]) -> dict[str, Any]:
    rule = _fields(rule, RULE_FIELDS, "security group rule")
    if rule.get("ipv6_cidr_blocks") or rule.get("prefix_list_ids") or rule.get("security_groups") or rule.get("self"):
        raise UnsupportedTerraform("security group rules other than IPv4 CIDR rules are not modelled")
    description = rule.get("description", "")
    return {
        "IpProtocol": rule["protocol"],
        "FromPort": int(rule["from_port"]),
        "ToPort": int(rule["to_port"]),
        "IpRanges": [{"CidrIp": cidr, "Description": description} for cidr in rule["cidr_blocks"]],
    }


@creator("aws_security_group", "name", "description", "vpc_id", "ingress", "egress", "tags")
def _security_group(c: Clients, a: dict[str, Any], _: Path) -> dict[str, Any]:
    """Exactly the rules declared, as the provider leaves a group: the allow-all egress rule AWS adds to a new group
    is revoked first (the provider does the same on create)."""
    egress = [_permission(rule) for rule in a.get("egress", [])]  # checked before anything is created
    ingress = [_permission(rule) for rule in a.get("ingress", [])]
    ec2 = c("ec2")
    vpc_id = (
        a.get("vpc_id") or ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    )
    spec = [{"ResourceType": "security-group", "Tags": _tags(a.get("tags", {}))}] if a.get("tags") else []
    group_id = ec2.create_security_group(
        GroupName=a["name"],
        Description=a.get("description", "Managed by Terraform"),
        VpcId=vpc_id,
        TagSpecifications=spec,
    )["GroupId"]
    group = ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]
    if group["IpPermissionsEgress"]:
        ec2.revoke_security_group_egress(GroupId=group_id, IpPermissions=group["IpPermissionsEgress"])
    if egress:
        ec2.authorize_security_group_egress(GroupId=group_id, IpPermissions=egress)
    if ingress:
        ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=ingress)
    account = group["OwnerId"]
    return {
        "id": group_id,
        "name": a["name"],
        "vpc_id": vpc_id,
        "arn": f"arn:aws:ec2:{ec2.meta.region_name}:{account}:security-group/{group_id}",
    }


def _block_devices(mappings: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for mapping in mappings:
        mapping = _fields(mapping, ("device_name", "ebs"), "block_device_mappings")
        ebs = _fields(
            _one(mapping["ebs"]),
            ("volume_size", "volume_type", "encrypted", "delete_on_termination"),
            "block_device_mappings.ebs",
        )
        out.append(
            {
                "DeviceName": mapping["device_name"],
                "Ebs": {
                    "VolumeSize": int(ebs["volume_size"]),
                    "VolumeType": ebs["volume_type"],
                    "Encrypted": str(ebs.get("encrypted", "false")).lower() == "true",
                    "DeleteOnTermination": str(ebs.get("delete_on_termination", "true")).lower() == "true",
                },
            }
        )
    return out


@creator(
    "aws_launch_template",
    "name",
    "image_id",
    "instance_type",
    "update_default_version",
    "block_device_mappings",
    "metadata_options",
    "iam_instance_profile",
    "vpc_security_group_ids",
    "tag_specifications",
    "user_data",
)
def _launch_template(c: Clients, a: dict[str, Any], _: Path) -> dict[str, Any]:
    metadata = _fields(
        _one(a["metadata_options"]),
        ("http_endpoint", "http_tokens", "http_put_response_hop_limit"),
        "metadata_options",
    )
    profile = _fields(_one(a["iam_instance_profile"]), ("name",), "iam_instance_profile")
    c("iam").get_instance_profile(InstanceProfileName=profile["name"])  # AWS refuses a profile that does not exist
    data: dict[str, Any] = {
        "ImageId": a["image_id"],
        "InstanceType": a["instance_type"],
        "BlockDeviceMappings": _block_devices(a.get("block_device_mappings", [])),
        "MetadataOptions": {
            "HttpEndpoint": metadata["http_endpoint"],
            "HttpTokens": metadata["http_tokens"],
            "HttpPutResponseHopLimit": int(metadata["http_put_response_hop_limit"]),
        },
        "IamInstanceProfile": {"Name": profile["name"]},
        "SecurityGroupIds": list(a.get("vpc_security_group_ids", [])),
        "TagSpecifications": [
            {"ResourceType": spec["resource_type"], "Tags": _tags(spec.get("tags", {}))}
            for spec in (_fields(s, ("resource_type", "tags"), "tag_specifications") for s in a["tag_specifications"])
        ],
    }
    if "user_data" in a:
        base64.b64decode(a["user_data"], validate=True)  # EC2 takes user data base64-encoded: refuse anything else
        data["UserData"] = a["user_data"]
    made = c("ec2").create_launch_template(LaunchTemplateName=a["name"], LaunchTemplateData=data)["LaunchTemplate"]
    return {
        "id": made["LaunchTemplateId"],
        "name": a["name"],
        "latest_version": made["LatestVersionNumber"],
        "default_version": made["DefaultVersionNumber"],
    }


@creator("aws_instance", "launch_template", "tags")
def _instance(c: Clients, a: dict[str, Any], _: Path) -> dict[str, Any]:
    """RunInstances from the template, then the template's profile associated (moto ignores it at launch)."""
    ec2 = c("ec2")
    template = _fields(_one(a["launch_template"]), ("id", "version"), "launch_template")
    spec = {"LaunchTemplateId": template["id"], "Version": str(template["version"])}
    tags = [{"ResourceType": "instance", "Tags": _tags(a["tags"])}] if a.get("tags") else []
    (made,) = ec2.run_instances(MinCount=1, MaxCount=1, LaunchTemplate=spec, TagSpecifications=tags)["Instances"]
    versions = ec2.describe_launch_template_versions(
        LaunchTemplateId=spec["LaunchTemplateId"], Versions=[spec["Version"]]
    )
    profile = versions["LaunchTemplateVersions"][0]["LaunchTemplateData"].get("IamInstanceProfile", {}).get("Name")
    if profile:
        ec2.associate_iam_instance_profile(InstanceId=made["InstanceId"], IamInstanceProfile={"Name": profile})
    instance_id = made["InstanceId"]
    return {
        "id": instance_id,
        "arn": f"arn:aws:ec2:{ec2.meta.region_name}:{made.get('OwnerId', '')}:instance/{instance_id}",
        "private_ip": made.get("PrivateIpAddress", ""),
    }


def read_availability_zones(c: Clients, a: Mapping[str, Any]) -> dict[str, Any]:
    """`data "aws_availability_zones"`: DescribeAvailabilityZones, filtered by `state` when given."""
    a = _fields(a, ("state",), "data aws_availability_zones")
    filters = [{"Name": "state", "Values": [a["state"]]}] if "state" in a else []
    zones = c("ec2").describe_availability_zones(Filters=filters)["AvailabilityZones"]
    return {
        "id": c("ec2").meta.region_name,
        "names": [z["ZoneName"] for z in zones],
        "zone_ids": [z["ZoneId"] for z in zones],
    }


# -- data sources ------------------------------------------------------------------------------------------------
DATA_READERS: dict[str, Callable[[Clients, Mapping[str, Any]], dict[str, Any]]] = {
    "aws_ssm_parameter": read_ssm_parameter,
    "aws_availability_zones": read_availability_zones,
}


def escape_literals(stack: Stack) -> Stack:
    """The stack with each Terraform literal "$${" hidden (as LITERAL + "{"), so no reference scan reads it."""
    text = json.dumps(stack.doc).replace("$${", json.dumps(LITERAL)[1:-1] + "{")
    return Stack(stack.name, stack.directory, json.loads(text))


def _unescape(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace(LITERAL + "{", "${")
    if isinstance(value, Mapping):
        return {k: _unescape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unescape(v) for v in value]
    return value


class DataResolver(Resolver):
    """A Resolver that also reads the data sources of DATA_READERS (as `terraform plan` reads them) when a stack is
    bound, and answers `${data.<type>.<name>.<attribute>}` from what they read."""

    def __init__(self, clients: Clients) -> None:
        super().__init__()
        self.clients = clients
        self.data: dict[str, dict[str, Any]] = {}  # "<stack>/data.<type>.<name>" -> attributes

    def bind(self, stack: Stack) -> None:
        sources = {t: b for t, b in stack.doc.get("data", {}).items() if t != "terraform_remote_state"}
        for dtype, items in sorted(sources.items()):
            if dtype not in DATA_READERS:
                raise UnsupportedTerraform(f"{stack.name}: data source {dtype} is not modelled")
            for name, body in sorted(items.items()):
                args = {k: v for k, v in self.resolve(stack.name, body).items() if k != "//"}
                self.data[f"{stack.name}/data.{dtype}.{name}"] = DATA_READERS[dtype](self.clients, args)
        rest = {**stack.doc, "data": {k: v for k, v in stack.doc.get("data", {}).items() if k not in sources}}
        super().bind(Stack(stack.name, stack.directory, rest))

    def resolve(self, stack: str, value: Any) -> Any:
        return _unescape(super().resolve(stack, value))

    def lookup(self, stack: str, ref: str) -> Any:
        parts = ref.split(".")
        if parts[0] == "data" and len(parts) == 4 and parts[1] in DATA_READERS:
            attributes = self.data[f"{stack}/data.{parts[1]}.{parts[2]}"]
            if parts[3] not in attributes:
                raise UnsupportedTerraform(
                    f"{stack}: data.{parts[1]}.{parts[2]} has no modelled attribute {parts[3]!r}"
                )
            return attributes[parts[3]]
        return super().lookup(stack, ref)
