"""docker-compose.yml stays valid for Debian's docker-compose, with a durable broker."""

from __future__ import annotations

import shutil
import subprocess

from tests.conftest import ROOT, unavailable


def test_compose_file_is_valid_and_keeps_the_broker_durable() -> None:
    tool = shutil.which("docker-compose")
    if tool is None:
        unavailable("docker-compose (Debian package)")
    compose = [str(tool), "-f", str(ROOT / "docker-compose.yml"), "config"]
    # The feed signing key is the operator's secret: without it the file refuses to start.
    missing = subprocess.run(compose, capture_output=True, text=True, timeout=60,
                             check=False, env={"PATH": "/usr/bin:/bin"})
    assert missing.returncode != 0 and "FEED_SIGNING_KEY" in missing.stderr
    result = subprocess.run(compose, capture_output=True, text=True, timeout=60, check=False,
                            env={"PATH": "/usr/bin:/bin", "FEED_SIGNING_KEY": "k" * 40})
    assert result.returncode == 0, result.stderr
    config = result.stdout
    for service in ("redis:", "redis-replica:", "postgres:", "commands-worker:",
                    "queries-service:"):
        assert f"  {service}" in config, service
    assert "--appendonly yes" in config and "--maxmemory-policy noeviction" in config
    assert "--replicaof redis 6379" in config
    assert "celery -A commands_worker.app worker -Q commands.requests,commands.machines" in config
    # The RabbitMQ cluster is a profile: started only with --profile rabbitmq.
    assert config.count("profiles:\n    - rabbitmq") == 3


def test_compose_rabbitmq_profile_is_a_three_node_cluster() -> None:
    tool = shutil.which("docker-compose")
    if tool is None:
        unavailable("docker-compose (Debian package)")
    url = ";".join(f"amqp://hostfactory:pw@rabbitmq-{n}//" for n in (1, 2, 3))
    result = subprocess.run(
        [str(tool), "-f", str(ROOT / "docker-compose.yml"), "--profile", "rabbitmq", "config"],
        capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin", "FEED_SIGNING_KEY": "k" * 40, "BROKER_URL": url})
    assert result.returncode == 0, result.stderr
    config = result.stdout
    for n in (1, 2, 3):
        assert f"  rabbitmq-{n}:" in config and f"hostname: rabbitmq-{n}" in config
    assert config.count("20-hostfactory.conf") == 3
    assert f"BROKER_URL: {url}" in config  # every app service is given the failover list
    conf = (ROOT / "deploy" / "rabbitmq" / "rabbitmq.conf").read_text()
    assert all(f"nodes.{n} = rabbit@rabbitmq-{n}" in conf for n in (1, 2, 3))
