"""Settings: DATABASE_URL is required and checked; every other setting has its default."""

import pytest

from cic_billing.config import Settings
from cic_common.logging import REDACTED, redact
from cic_common.settings import SettingsError, parse_settings


def test_defaults() -> None:
    settings = parse_settings(Settings, {"DATABASE_URL": "postgresql://u:p@db:5432/cic"})
    assert settings.grpc_port == 50052
    assert settings.metrics_port == 9102
    assert settings.shutdown_grace_s == 25.0
    assert settings.db_pool_max == 10
    assert settings.price_refresh_s == 30.0
    assert (settings.log_level, settings.log_format) == ("INFO", "json")


def test_environment_overrides_defaults() -> None:
    settings = parse_settings(
        Settings,
        {
            "DATABASE_URL": "postgres://db/cic",
            "GRPC_PORT": "6000",
            "METRICS_PORT": "6001",
            "SHUTDOWN_GRACE_S": "3",
            "DB_POOL_MAX": "4",
            "LOG_LEVEL": "DEBUG",
            "LOG_FORMAT": "console",
        },
    )
    assert (settings.grpc_port, settings.metrics_port, settings.db_pool_max) == (6000, 6001, 4)
    assert settings.shutdown_grace_s == 3.0
    assert (settings.log_level, settings.log_format) == ("DEBUG", "console")


def test_missing_database_url_names_the_variable() -> None:
    with pytest.raises(SettingsError, match=r"^DATABASE_URL is required but not set$"):
        parse_settings(Settings, {"GRPC_PORT": "50052"})


@pytest.mark.parametrize("url", ["mysql://u:secret@db/cic", "secret-but-not-a-url", ""])
def test_database_url_must_be_postgres_and_is_not_echoed(url: str) -> None:
    with pytest.raises(SettingsError) as err:
        parse_settings(Settings, {"DATABASE_URL": url})
    message = str(err.value)
    assert message.startswith("DATABASE_URL is invalid")
    assert "secret" not in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("variable", "value"),
    [("DB_POOL_MAX", "0"), ("GRPC_PORT", "70000"), ("SHUTDOWN_GRACE_S", "-1")],
)
def test_bad_values_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=rf"^{variable} is invalid"):
        parse_settings(Settings, {"DATABASE_URL": "postgresql://db/cic", variable: value})


def test_stripe_settings_are_optional_and_secret() -> None:
    bare = parse_settings(Settings, {"DATABASE_URL": "postgres://db/cic"})
    assert (bare.stripe_api_key, bare.stripe_webhook_secret, bare.stripe_api_base) == (
        None,
        None,
        None,
    )
    empty = parse_settings(
        Settings,
        {"DATABASE_URL": "postgres://db/cic", "STRIPE_API_KEY": "", "STRIPE_WEBHOOK_SECRET": ""},
    )
    assert (empty.stripe_api_key, empty.stripe_webhook_secret) == (None, None)

    key, secret = "sk_live_" + "a" * 24, "whsec_" + "b" * 24
    settings = parse_settings(
        Settings,
        {
            "DATABASE_URL": "postgres://db/cic",
            "STRIPE_API_KEY": key,
            "STRIPE_WEBHOOK_SECRET": secret,
            "STRIPE_API_BASE": "http://127.0.0.1:12111",
        },
    )
    assert settings.stripe_api_key is not None
    assert settings.stripe_api_key.get_secret_value() == key
    assert key not in repr(settings) and secret not in repr(settings)
    assert settings.stripe_requests_per_s == 500.0


def test_test_mode_keys_are_held_to_stripes_test_mode_limit() -> None:
    settings = parse_settings(
        Settings,
        {"DATABASE_URL": "postgres://db/cic", "STRIPE_API_KEY": "sk_test_abc"},
    )
    assert settings.stripe_requests_per_s == 20.0


@pytest.mark.parametrize("base", ["ftp://x", "not a url", "http://"])
def test_a_bad_stripe_base_names_the_variable(base: str) -> None:
    with pytest.raises(SettingsError, match=r"^STRIPE_API_BASE is invalid"):
        parse_settings(Settings, {"DATABASE_URL": "postgres://db/cic", "STRIPE_API_BASE": base})


def test_stripe_secrets_are_redacted_from_logs() -> None:
    key, secret = "sk_live_" + "a" * 24, "whsec_" + "b" * 24
    line = redact(f"calling Stripe with {key} and verifying with {secret}")
    assert key not in line and secret not in line
    assert line.count(REDACTED) == 2
