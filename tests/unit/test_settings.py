"""Settings from the environment: defaults that run on one box, fallbacks between the split
URLs, and errors that name the variable an operator got wrong."""

from __future__ import annotations

import pytest

from shared.settings import Settings, SettingsError


def test_defaults_run_on_one_machine() -> None:
    s = Settings.from_env({})
    assert (s.redis_url, s.broker_url, s.cache_url, s.cache_read_url) == (
        "redis://localhost:6379/0",) * 4
    assert s.store_url == "sqlite:///var/hostfactory.sqlite3"
    assert (s.query_host, s.query_port, s.query_url) == ("127.0.0.1", 8080,
                                                         "http://127.0.0.1:8080")
    assert s.query_api_tokens == () and s.log_level == "INFO"


def test_split_urls_follow_their_parent_unless_set() -> None:
    s = Settings.from_env({"REDIS_URL": "redis://a/0", "CACHE_URL": "redis://c/1"})
    assert (s.broker_url, s.cache_url, s.cache_read_url) == (
        "redis://a/0", "redis://c/1", "redis://c/1")
    s = Settings.from_env({"REDIS_URL": "redis://a/0", "CACHE_READ_URL": "redis://r/0",
                           "BROKER_URL": "redis://b/0"})
    assert (s.broker_url, s.cache_url, s.cache_read_url) == (
        "redis://b/0", "redis://a/0", "redis://r/0")


def test_empty_values_mean_unset_and_text_is_typed() -> None:
    s = Settings.from_env({"QUERY_PORT": "", "QUERY_API_TOKENS": " alpha, ,beta ",
                           "LOG_LEVEL": "debug", "BROKER_VISIBILITY_TIMEOUT_S": "2.5",
                           "BROKER_SENTINEL_MASTER": "mymaster", "QUERY_HOST": "0.0.0.0",
                           "QUERY_PORT ": "1"})
    assert s.query_port == 8080
    assert s.query_api_tokens == ("alpha", "beta")
    assert s.log_level == "DEBUG" and s.visibility_timeout_s == 2.5
    assert s.broker_sentinel_master == "mymaster"
    assert s.query_url == "http://0.0.0.0:8080"


@pytest.mark.parametrize(("name", "value", "problem"), [
    ("QUERY_PORT", "70000", "less than or equal to 65535"),
    ("QUERY_PORT", "eighty", "valid integer"),
    ("QUERY_WORKERS", "0", "greater than or equal to 1"),
    ("BROKER_VISIBILITY_TIMEOUT_S", "0.1", "greater than or equal to 1"),
    ("COMMAND_MAX_RETRIES", "-1", "greater than or equal to 0"),
    ("QUERY_MAX_WAIT_S", "99999", "less than or equal to 3600"),
    ("LOG_LEVEL", "chatty", "'DEBUG', 'INFO'"),
    ("BROKER_URL", "kafka://k:9092", "unknown broker scheme 'kafka'"),
    ("BROKER_URL", "amqp://a//;redis://b/0", "one kind of broker"),
])
def test_a_bad_value_names_its_variable(name: str, value: str, problem: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({name: value})
    message = str(caught.value)
    assert message.startswith(f"{name}: ") and problem in message
    assert repr(value).lower() in message.lower()  # what the operator set


def test_the_process_environment_is_the_default_source(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUERY_PORT", "9091")
    monkeypatch.setenv("COMMAND_RETENTION_S", "3600")
    s = Settings.from_env()
    assert (s.query_port, s.command_retention_s, s.query_url) == (
        9091, 3600, "http://127.0.0.1:9091")


def test_a_refused_broker_url_does_not_show_its_password() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"BROKER_URL": "amqp://hf:s3cret@a//;redis://u:pw@b/0"})
    message = str(caught.value)
    assert "s3cret" not in message and ":pw@" not in message
    assert "amqp://hf:***@a//" in message
