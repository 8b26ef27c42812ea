"""The AWS provider's IAM policy, narrowed to what a templates file names: ``hfctl provider
aws-policy --templates FILE``.

- ``iam:PassRole`` only for the roles of the instance profiles the templates name (resolved
  through IAM; a profile that cannot be resolved is an error, never a wildcard), and only to
  EC2;
- ``ec2:TerminateInstances`` only on instances tagged with this pair's cluster;
- tags only at launch; launch, describe and the fleets' service-linked roles as the provider
  uses them. With no instance profile in the templates, no ``iam:PassRole`` at all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shared import awsprov

LAUNCH_ACTIONS = ["ec2:RunInstances", "ec2:CreateFleet", "ec2:CreateLaunchTemplate"]
DESCRIBE_ACTIONS = ["ec2:DescribeInstances", "ec2:DescribeImages",
                    "ec2:DescribeSpotInstanceRequests", "ec2:DescribeLaunchTemplates",
                    "ec2:DescribeLaunchTemplateVersions"]


def instance_profiles(templates_file: Path) -> list[str]:
    """The instance profiles (names or ARNs) the AWS templates of a file name, in order."""
    document = json.loads(templates_file.read_text())
    found: dict[str, None] = {}
    for template in document.get("templates") or []:
        if isinstance(template, dict) and awsprov.is_aws_template(template):
            profile = awsprov.present(template).get("instanceProfile")
            if isinstance(profile, str) and profile.strip():
                found[profile.strip()] = None
    return list(found)


def role_arns(iam: Any, profiles: list[str]) -> list[str]:
    """The role ARNs of these instance profiles; raises LookupError naming one that has none."""
    arns: dict[str, None] = {}
    for profile in profiles:
        name = profile.rsplit("/", 1)[-1] if profile.startswith("arn:") else profile
        roles = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Roles"]
        if not roles:
            raise LookupError(f"instance profile {profile} holds no role")
        arns.update((r["Arn"], None) for r in roles)
    return list(arns)


def policy(cluster: str, roles: list[str]) -> dict[str, Any]:
    statements: list[dict[str, Any]] = [
        {"Sid": "Launch", "Effect": "Allow", "Action": LAUNCH_ACTIONS, "Resource": "*"},
        {"Sid": "TagOnlyAtLaunch", "Effect": "Allow", "Action": "ec2:CreateTags",
         "Resource": "*", "Condition": {"StringEquals": {
             "ec2:CreateAction": ["RunInstances", "CreateFleet", "CreateLaunchTemplate"]}}},
        {"Sid": "Follow", "Effect": "Allow", "Action": DESCRIBE_ACTIONS, "Resource": "*"},
        {"Sid": "TerminateOnlyThisCluster", "Effect": "Allow",
         "Action": "ec2:TerminateInstances", "Resource": "arn:aws:ec2:*:*:instance/*",
         "Condition": {"StringEquals": {"ec2:ResourceTag/hf:cluster": cluster}}},
        {"Sid": "FleetServiceLinkedRoles", "Effect": "Allow",
         "Action": "iam:CreateServiceLinkedRole", "Resource": "*",
         "Condition": {"StringEquals": {"iam:AWSServiceName": [
             "ec2fleet.amazonaws.com", "spot.amazonaws.com"]}}},
    ]
    if roles:
        statements.append({
            "Sid": "PassOnlyTheTemplatesRoles", "Effect": "Allow", "Action": "iam:PassRole",
            "Resource": roles,
            "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}})
    return {"Version": "2012-10-17", "Statement": statements}
