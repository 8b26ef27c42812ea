"""The EC2 client the provider uses: botocore's own retries, every call bounded in time."""

from __future__ import annotations

import os
from typing import Any


def ec2_client(threads: int = 8) -> Any:
    """boto3's EC2 client from the standard settings (credentials chain,
    ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL``), with botocore's retry mode (adaptive by
    default: it backs off on throttling for the whole client; ``AWS_RETRY_MODE`` and
    ``AWS_MAX_ATTEMPTS`` choose others) and connect/read timeouts, so no call hangs."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:  # pragma: no cover - the extra is not installed
        raise SystemExit("hfctl provider aws needs boto3: pip install "
                         "'hostfactory-cqrs[aws]'") from exc
    config = Config(
        retries={"mode": os.environ.get("AWS_RETRY_MODE", "adaptive"),
                 "max_attempts": int(os.environ.get("AWS_MAX_ATTEMPTS", "8"))},
        connect_timeout=float(os.environ.get("AWS_CONNECT_TIMEOUT_S", "5")),
        read_timeout=float(os.environ.get("AWS_READ_TIMEOUT_S", "30")),
        max_pool_connections=threads + 2)
    return boto3.client("ec2", config=config)


def iam_client() -> Any:
    """boto3's IAM client from the standard settings (to resolve instance profiles)."""
    try:
        import boto3
    except ImportError as exc:  # pragma: no cover - the extra is not installed
        raise SystemExit("hfctl provider aws-policy needs boto3: pip install "
                         "'hostfactory-cqrs[aws]'") from exc
    return boto3.client("iam")
