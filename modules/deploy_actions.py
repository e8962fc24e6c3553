"""What the deploy role and the plan role may call, one tuple per service and purpose, each with the page of AWS's
Service Authorization Reference (SAR) that gives its resource types and condition keys. modules/deploy_policies.py
builds the two roles' policies from these and the ARNs of modules/deploy_resources.py; modules/github_oidc.py
re-exports every name, so tests and reviewers read one list.

Read actions: the plan role gets these, the deploy role gets them and the matching writes.
"""

from __future__ import annotations

SQS_READ = ("sqs:GetQueueAttributes", "sqs:GetQueueUrl", "sqs:ListDeadLetterSourceQueues", "sqs:ListQueueTags")
SQS_WRITE = ("sqs:CreateQueue", "sqs:DeleteQueue", "sqs:SetQueueAttributes", "sqs:TagQueue", "sqs:UntagQueue")
DYNAMODB_READ = (
    "dynamodb:DescribeContinuousBackups",
    "dynamodb:DescribeTable",
    "dynamodb:DescribeTimeToLive",
    "dynamodb:ListTagsOfResource",
)
# No dynamodb:DeleteTable: CI can never delete the task store, whatever a change to prevent_destroy says.
DYNAMODB_WRITE = (
    "dynamodb:CreateTable",
    "dynamodb:TagResource",
    "dynamodb:UntagResource",
    "dynamodb:UpdateContinuousBackups",
    "dynamodb:UpdateTable",
    "dynamodb:UpdateTimeToLive",
)
IAM_READ = (
    "iam:GetInstanceProfile",
    "iam:GetRole",
    "iam:GetRolePolicy",
    "iam:ListAttachedRolePolicies",
    "iam:ListInstanceProfilesForRole",
    "iam:ListRolePolicies",
    "iam:ListRoleTags",
)
# IAM condition keys per action: AWS's Service Authorization Reference, "Actions, resources, and condition keys for
# AWS Identity and Access Management" (https://docs.aws.amazon.com/service-authorization/latest/reference/
# list_awsidentityandaccessmanagementiam.html; read in the machine-readable copy of that table at
# github.com/iann0036/iam-dataset, aws/iam_definition.json). iam:PermissionsBoundary is a condition key of the role
# actions AttachRolePolicy, CreateRole, DeleteRole, DeleteRolePermissionsBoundary, DeleteRolePolicy,
# DetachRolePolicy, PutRolePermissionsBoundary, PutRolePolicy, UpdateAssumeRolePolicy, UpdateRole and
# UpdateRoleDescription (and their user twins); for CreateRole and PutRolePermissionsBoundary it is the boundary the
# request sets, for the others the boundary the role carries (IAM User Guide, "IAM and AWS STS condition context
# keys", iam:PermissionsBoundary: "checks that the specified policy is attached as a permissions boundary on the IAM
# principal resource"). TagRole, PassRole and the instance-profile actions do not take it.
PERMISSIONS_BOUNDARY_ACTIONS = (
    "iam:AttachRolePolicy",
    "iam:CreateRole",
    "iam:DeleteRole",
    "iam:DeleteRolePermissionsBoundary",
    "iam:DeleteRolePolicy",
    "iam:DetachRolePolicy",
    "iam:PutRolePermissionsBoundary",
    "iam:PutRolePolicy",
    "iam:UpdateAssumeRolePolicy",
    "iam:UpdateRole",
    "iam:UpdateRoleDescription",
)
#
# Writes that change what a runtime role may do or who may assume it: only on a role carrying the boundary.
# That is every action taking the boundary key but AttachRolePolicy and DeleteRolePermissionsBoundary (never allowed).
ROLE_WRITE = tuple(
    a for a in PERMISSIONS_BOUNDARY_ACTIONS if a not in ("iam:AttachRolePolicy", "iam:DeleteRolePermissionsBoundary")
)
# Refused (explicit Deny) whenever the role would be without the boundary, whatever else a policy allows.
# AttachRolePolicy is in no Allow at all: our stacks use inline policies only, so no managed policy (say
# AdministratorAccess) is ever attached by CI.
BOUNDARY_REQUIRED = (
    "iam:AttachRolePolicy",
    "iam:CreateRole",
    "iam:PutRolePermissionsBoundary",
    "iam:PutRolePolicy",
    "iam:UpdateAssumeRolePolicy",
)
# Never allowed, on any role: a role that loses its boundary could then be given anything.
BOUNDARY_REMOVAL = ("iam:DeleteRolePermissionsBoundary",)
# IAM tags grant nothing here (no policy of ours conditions on a role's or a profile's tag). CreateRole and
# CreateInstanceProfile with tags (the provider's default tags) also need TagRole/TagInstanceProfile (IAM User Guide,
# "Tags for AWS Identity and Access Management resources": tagging on create needs the Tag* permission too).
ROLE_TAGGING = ("iam:TagRole", "iam:UntagRole")
PROFILE_WRITE = (
    "iam:AddRoleToInstanceProfile",
    "iam:CreateInstanceProfile",
    "iam:DeleteInstanceProfile",
    "iam:RemoveRoleFromInstanceProfile",
    "iam:TagInstanceProfile",
    "iam:UntagInstanceProfile",
)
# Passing a role, each to its own service only: the shutdown role to Lambda (iam:PassedToService
# lambda.amazonaws.com, the key CreateFunction sets), the GPU role into its instance profile (AddRoleToInstanceProfile
# "must be granted the PassRole permission on the IAM role", IAM API Reference). The IAM docs name no service for
# that call, so the GPU role's condition is ...IfExists: a call that names no service, or EC2, may pass it; one
# that passes it to any other service (a Lambda function) may not. Fleet mode's group passes it the same way, into
# the instances it launches from the template. The orchestrator's role goes to the API function, so to Lambda only,
# like the shutdown role.
PASS_ROLE = ("iam:PassRole",)
LAMBDA_READ = ("lambda:Get*", "lambda:List*")
LAMBDA_WRITE = (
    "lambda:AddPermission",
    "lambda:CreateFunction",
    "lambda:DeleteFunction",
    "lambda:DeleteFunctionConcurrency",
    "lambda:PublishVersion",
    "lambda:PutFunctionConcurrency",
    "lambda:RemovePermission",
    "lambda:TagResource",
    "lambda:UntagResource",
    "lambda:UpdateFunctionCode",
    "lambda:UpdateFunctionConfiguration",
    # The API: its alias "admin" and the two function URLs (one per qualifier).
    "lambda:CreateAlias",
    "lambda:DeleteAlias",
    "lambda:UpdateAlias",
    "lambda:CreateFunctionUrlConfig",
    "lambda:DeleteFunctionUrlConfig",
    "lambda:UpdateFunctionUrlConfig",
)
LAYER_WRITE = ("lambda:DeleteLayerVersion", "lambda:PublishLayerVersion")
# The callers' managed policies (aws_iam_policy: create, read, new versions on update, delete with old versions).
CALLER_POLICY_READ = ("iam:GetPolicy", "iam:GetPolicyVersion", "iam:ListPolicyTags", "iam:ListPolicyVersions")
CALLER_POLICY_WRITE = (
    "iam:CreatePolicy",
    "iam:CreatePolicyVersion",
    "iam:DeletePolicy",
    "iam:DeletePolicyVersion",
    "iam:TagPolicy",
    "iam:UntagPolicy",
)
LOGS_READ = ("logs:ListTagsForResource", "logs:ListTagsLogGroup")
LOGS_WRITE = (
    "logs:CreateLogGroup",
    "logs:DeleteLogGroup",
    "logs:DeleteRetentionPolicy",
    "logs:PutRetentionPolicy",
    "logs:TagResource",
    "logs:UntagResource",
)
ALARM_READ = ("cloudwatch:ListTagsForResource",)
ALARM_WRITE = (
    "cloudwatch:DeleteAlarms",
    "cloudwatch:DisableAlarmActions",
    "cloudwatch:EnableAlarmActions",
    "cloudwatch:PutMetricAlarm",
    "cloudwatch:TagResource",
    "cloudwatch:UntagResource",
)
EVENTS_READ = ("events:DescribeRule", "events:ListTagsForResource", "events:ListTargetsByRule")
EVENTS_WRITE = (
    "events:DeleteRule",
    "events:DisableRule",
    "events:EnableRule",
    "events:PutRule",
    "events:PutTargets",
    "events:RemoveTargets",
    "events:TagResource",
    "events:UntagResource",
)
SSM_READ = ("ssm:GetParameter", "ssm:GetParameters", "ssm:ListTagsForResource")
# AWS's public parameter naming the Deep Learning AMI (create mode's data source): read-only, AWS's own.
PUBLIC_PARAMETER_READ = ("ssm:GetParameter",)
DOCUMENT_READ = ("ssm:DescribeDocument", "ssm:DescribeDocumentPermission", "ssm:GetDocument", "ssm:ListTagsForResource")
DOCUMENT_WRITE = (
    "ssm:AddTagsToResource",
    "ssm:CreateDocument",
    "ssm:DeleteDocument",
    "ssm:RemoveTagsFromResource",
    "ssm:UpdateDocument",
    "ssm:UpdateDocumentDefaultVersion",
)
# An association is authorized on the document and the instances it targets, and on itself once it exists
# (Service Authorization Reference, Systems Manager: CreateAssociation takes document, instance and association).
ASSOCIATION_READ = ("ssm:DescribeAssociation",)
ASSOCIATION_WRITE = ("ssm:CreateAssociation", "ssm:DeleteAssociation", "ssm:UpdateAssociation")
# Create mode (EC2 Service Authorization Reference, https://docs.aws.amazon.com/service-authorization/latest/
# reference/list_amazonec2.html): creating the launch template, the security group and instances from the template
# (RunInstances is authorized on every resource it touches: image, subnet, network interface, volume, security group,
# launch template, instance); tags only while creating (ec2:CreateAction); and changing or deleting only what carries
# this environment's `environment` tag (the provider's default tags put it on everything the stacks create).
HOST_CREATE = ("ec2:CreateLaunchTemplate", "ec2:CreateSecurityGroup", "ec2:RunInstances")
HOST_TAG_ON_CREATE = ("ec2:CreateTags",)
HOST_CHANGE = (
    "ec2:AuthorizeSecurityGroupEgress",
    "ec2:CreateLaunchTemplateVersion",
    "ec2:DeleteLaunchTemplate",
    "ec2:DeleteSecurityGroup",
    "ec2:DeleteTags",
    "ec2:ModifyLaunchTemplate",
    "ec2:RevokeSecurityGroupEgress",
    "ec2:RevokeSecurityGroupIngress",
    "ec2:TerminateInstances",
)
# Fleet mode (modules/fleet.py GpuFleet), what Terraform calls on the group, all authorized on the group's ARN
# (Service Authorization Reference, Amazon EC2 Auto Scaling: https://docs.aws.amazon.com/service-authorization/
# latest/reference/list_amazonec2autoscaling.html): create/update/delete, its hook and warm pool, its tags (tagging
# on create needs CreateOrUpdateTags too), AZRebalance suspended, and on delete the provider clears the members'
# scale-in protection before it drains the group (SetInstanceProtection); the group metrics the dashboard graphs are
# switched on and off by Enable/DisableMetricsCollection (enabled_metrics). Its Describe* calls take no resource: they
# are in UNSCOPED_READ. Creating or updating a group from a launch template also checks ec2:RunInstances on what it
# launches (GpuHostsCreate) and iam:PassRole on the template's instance role (PassInstanceRoleToProfile): "An IAM user
# or role that creates or updates an Auto Scaling group using a launch template must have permission to use the
# ec2:RunInstances action", and it needs iam:PassRole for a template that names an instance profile
# (https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-launch-template-permissions.html).
FLEET_WRITE = (
    "autoscaling:CreateAutoScalingGroup",
    "autoscaling:CreateOrUpdateTags",
    "autoscaling:DeleteAutoScalingGroup",
    "autoscaling:DeleteLifecycleHook",
    "autoscaling:DeleteTags",
    "autoscaling:DeleteWarmPool",
    "autoscaling:DisableMetricsCollection",
    "autoscaling:EnableMetricsCollection",
    "autoscaling:PutLifecycleHook",
    "autoscaling:PutWarmPool",
    "autoscaling:ResumeProcesses",
    "autoscaling:SetInstanceProtection",
    "autoscaling:SuspendProcesses",
    "autoscaling:UpdateAutoScalingGroup",
)
# The first group of an account makes Auto Scaling create its service-linked role, AWSServiceRoleForAutoScaling,
# with the caller's iam:CreateServiceLinkedRole, as AWS's own example grants it: on that role's ARN, for
# autoscaling.amazonaws.com only (Amazon EC2 Auto Scaling User Guide, "Service-linked roles":
# https://docs.aws.amazon.com/autoscaling/ec2/userguide/autoscaling-service-linked-role.html). That role launches
# and stops the fleet's instances (Spot included: it holds ec2:RequestSpotInstances), so no EC2 Spot role is needed.
SERVICE_LINKED_ROLE_ACTIONS = ("iam:CreateServiceLinkedRole",)
AUTOSCALING_SERVICE = "autoscaling.amazonaws.com"
AUTOSCALING_SERVICE_ROLE = f"aws-service-role/{AUTOSCALING_SERVICE}/AWSServiceRoleForAutoScaling"
SSM_WRITE = ("ssm:AddTagsToResource", "ssm:DeleteParameter", "ssm:PutParameter", "ssm:RemoveTagsFromResource")
BUCKET_READ = (
    "s3:GetAccelerateConfiguration",
    "s3:GetBucket*",
    "s3:GetEncryptionConfiguration",
    "s3:GetLifecycleConfiguration",
    "s3:GetReplicationConfiguration",
    "s3:ListBucket",
)
BUCKET_WRITE = (
    "s3:CreateBucket",
    "s3:DeleteBucket",
    "s3:DeleteBucketPolicy",
    "s3:ListBucketVersions",
    "s3:PutBucketLogging",
    "s3:PutBucketPolicy",
    "s3:PutBucketOwnershipControls",
    "s3:PutBucketPublicAccessBlock",
    "s3:PutBucketTagging",
    "s3:PutBucketVersioning",
    "s3:PutEncryptionConfiguration",
    "s3:PutLifecycleConfiguration",
)
OBJECT_READ = ("s3:GetObject", "s3:GetObjectTagging")
OBJECT_WRITE = ("s3:DeleteObject", "s3:DeleteObjectVersion", "s3:PutObject", "s3:PutObjectTagging")
# These support no resource-level permissions: AWS accepts only "*" for them. All are read-only.
UNSCOPED_READ = (
    "autoscaling:Describe*",
    "cloudwatch:DescribeAlarms",
    "ec2:Describe*",
    "logs:DescribeLogGroups",
    "ssm:DescribeParameters",
)
STATE_BUCKET_READ = ("s3:ListBucket",)
STATE_OBJECT_READ = ("s3:GetObject",)
STATE_OBJECT_WRITE = ("s3:DeleteObject", "s3:PutObject")

# --- the events stack (modules/stacks_events.py EventsStack) ---
# The bus: every call on event-bus/<name> (SAR, Amazon EventBridge: CreateEventBus, DeleteEventBus, DescribeEventBus,
# UpdateEventBus, TagResource, UntagResource and ListTagsForResource take the event-bus resource type). Tagging on
# create (the provider's default tags) needs events:TagResource as well.
EVENT_BUS_READ = ("events:DescribeEventBus", "events:ListTagsForResource")
EVENT_BUS_WRITE = (
    "events:CreateEventBus",
    "events:DeleteEventBus",
    "events:TagResource",
    "events:UntagResource",
    "events:UpdateEventBus",
)
# The signing secret, on secret:<name>-?????? (SAR, AWS Secrets Manager: the Secret resource type, whose ARN ends in
# the six random characters Secrets Manager appends). Terraform reads it with DescribeSecret and GetResourcePolicy;
# CreateSecret with tags also needs TagResource (Secrets Manager API Reference, CreateSecret). Terraform creates it
# empty and the webhook function writes its value, so neither CI role may read or write the value (no GetSecretValue,
# no PutSecretValue).
WEBHOOK_SECRET_READ = ("secretsmanager:DescribeSecret", "secretsmanager:GetResourcePolicy")
WEBHOOK_SECRET_WRITE = (
    "secretsmanager:CreateSecret",
    "secretsmanager:DeleteSecret",
    "secretsmanager:TagResource",
    "secretsmanager:UntagResource",
    "secretsmanager:UpdateSecret",
)
# Event source mappings (SAR, AWS Lambda): CreateEventSourceMapping has no resource type, only the condition key
# lambda:FunctionArn; Get/Update/DeleteEventSourceMapping are on event-source-mapping:<UUID>, a UUID Lambda assigns at
# creation, and take lambda:FunctionArn too. An ARN can only wildcard that UUID, so the condition is what ties every one
# of these calls to this environment's two functions. The provider reads a mapping's tags (ListTags) and tags it on
# create ("lambda:TagResource ... to perform a tag on create", Lambda Developer Guide, "Using tags on event source
# mappings"); those take no lambda:FunctionArn, and a mapping's tags grant nothing here.
MAPPING_CREATE = ("lambda:CreateEventSourceMapping",)
MAPPING_READ = ("lambda:GetEventSourceMapping",)
MAPPING_WRITE = ("lambda:DeleteEventSourceMapping", "lambda:UpdateEventSourceMapping")
MAPPING_TAGS_READ = ("lambda:ListTags",)
MAPPING_TAGGING = ("lambda:TagResource", "lambda:UntagResource")
# No stream action: Terraform takes the task table's stream ARN from DescribeTable (LatestStreamArn) and turns the
# stream on with UpdateTable; the provider's aws_dynamodb_table uses the DynamoDB API only, never DynamoDB Streams
# (DescribeStream, ListStreams). Lambda reads the stream with the function's role, not the caller's.

# --- the alarm stack (modules/stacks_events.py AlarmStack, modules/observability.py) ---
# The topic: every call on its ARN (SAR, Amazon SNS: CreateTopic, DeleteTopic, Get/SetTopicAttributes, TagResource,
# UntagResource, ListTagsForResource take the topic resource type; CreateTopic's dependent action is sns:TagResource).
# The topic policy is one of its attributes (SetTopicAttributes). Get/SetSubscriptionAttributes and Unsubscribe take
# the topic resource type too; Subscribe also carries sns:Protocol, held to email (the stack's only protocol).
TOPIC_READ = ("sns:GetSubscriptionAttributes", "sns:GetTopicAttributes", "sns:ListTagsForResource")
TOPIC_WRITE = (
    "sns:CreateTopic",
    "sns:DeleteTopic",
    "sns:SetSubscriptionAttributes",
    "sns:SetTopicAttributes",
    "sns:TagResource",
    "sns:Unsubscribe",
    "sns:UntagResource",
)
TOPIC_SUBSCRIBE = ("sns:Subscribe",)
SUBSCRIPTION_PROTOCOL = "email"
# The topic's KMS key (SAR, AWS Key Management Service). CreateKey has no resource type (its dependent actions are
# kms:PutKeyPolicy and kms:TagResource); every later call is on key/<key id>, an id KMS assigns. What the provider
# calls (aws_kms_key): CreateKey with the policy and tags; at once EnableKeyRotation, then GetKeyPolicy and
# ListResourceTags until they show what it set; on refresh DescribeKey, GetKeyPolicy, GetKeyRotationStatus,
# ListResourceTags; on change PutKeyPolicy, Enable/DisableKeyRotation, UpdateKeyDescription, Tag/UntagResource; on
# destroy ScheduleKeyDeletion. Scoped as follows (modules/deploy_policies.py):
# - CreateKey only with this environment's `environment` tag (aws:RequestTag), and tagging on create with it: "To add
#   tags while creating a KMS key, the principal must have permission in an IAM policy that isn't restricted to
#   particular KMS keys" (KMS Developer Guide, "Controlling access to tags"), so that TagResource is on every key of the
#   account, held to requests that set this environment's tag.
# - What the provider calls within seconds of CreateKey (the reads and EnableKeyRotation) on every key of the
#   account, without a tag condition: "It might take up to five minutes for tag and alias changes to affect KMS key
#   authorization" (KMS Developer Guide, "ABAC for AWS KMS"), and none of these changes who may use a key.
# - What changes a key's policy, rotation, description or tags, or deletes it, only on keys carrying this
#   environment's tag (aws:ResourceTag/environment, a condition key of each of these actions); ScheduleKeyDeletion
#   only with the longest waiting period (kms:ScheduleKeyDeletionPendingWindowInDays), so a deleted key can be
#   recovered for 30 days.
# - Never the lockout check's bypass (kms:BypassPolicyLockoutSafetyCheck, on CreateKey and PutKeyPolicy): a key policy
#   CI writes must keep letting the account's IAM policies manage the key.
# What that leaves: tagging on create cannot be told apart from tagging a key that exists, so an untagged customer
# managed key elsewhere in the account, whose key policy defers to IAM, could be given this environment's tag and then
# be changed like the environment's own. With one account per environment (docs/OPERATIONS.md) there is no such key.
# Not granted: any use of the key (Encrypt, Decrypt...), grants, aliases, Enable/DisableKey, CancelKeyDeletion.
KEY_CREATE = ("kms:CreateKey",)
KEY_TAG_ON_CREATE = ("kms:TagResource",)
KEY_READ = ("kms:DescribeKey", "kms:GetKeyPolicy", "kms:GetKeyRotationStatus", "kms:ListResourceTags")
KEY_ROTATION_ON = ("kms:EnableKeyRotation",)
KEY_CHANGE = (
    "kms:DisableKeyRotation",
    "kms:PutKeyPolicy",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:UpdateKeyDescription",
)
KEY_DELETION = ("kms:ScheduleKeyDeletion",)
KEY_POLICY_WRITES = ("kms:CreateKey", "kms:PutKeyPolicy")  # the two that take kms:BypassPolicyLockoutSafetyCheck
# The dashboard, on arn:aws:cloudwatch::<account>:dashboard/<name> (SAR, Amazon CloudWatch: PutDashboard,
# GetDashboard, DeleteDashboards take the dashboard resource type, which has no Region).
DASHBOARD_READ = ("cloudwatch:GetDashboard",)
DASHBOARD_WRITE = ("cloudwatch:DeleteDashboards", "cloudwatch:PutDashboard")
