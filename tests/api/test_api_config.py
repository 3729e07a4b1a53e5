"""The [api] section: TOML, environment overrides and errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.config import ApiConfig, Config, load_config
from relay.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    api = Config().api
    assert api == ApiConfig()
    assert api.enabled and api.listen == ("127.0.0.1:8025",)
    assert api.max_recipients == 1000
    assert api.idempotency_ttl == 86400.0
    assert api.webhooks == ()


def test_file_and_environment(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [api]
        listen = ["0.0.0.0:8080", "[::1]:8080"]
        max_body_size = "10MiB"
        max_recipients = 500
        idempotency_ttl = "12h"
        webhook_retry_max = "10m"
        log_events = "all"

        [[api.webhooks]]
        url = "https://hooks.example.com/relay"
        secret = "0123456789abcdef0123"
        events = ["delivered", "bounced"]

        [[api.webhooks]]
        url = "http://127.0.0.1:9000/all"
        secret = "another-secret-value"
        """,
    )
    cfg = load_config(path, env={"RELAY_API_MAX_RECIPIENTS": "200", "RELAY_API_ENABLED": "off"})
    api = cfg.api
    assert api.listen == ("0.0.0.0:8080", "[::1]:8080")
    assert api.max_body_size == 10 << 20
    assert api.max_recipients == 200  # the environment wins
    assert api.enabled is False
    assert api.idempotency_ttl == 43200.0
    assert api.webhook_retry_max == 600.0
    assert api.log_events == "all"
    assert [w.events for w in api.webhooks] == [("delivered", "bounced"), ()]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[api]\nlisten = ["nowhere"]', "api.listen"),
        ("[api]\nmax_recipients = 0", "api.max_recipients"),
        ("[api]\nmax_body_size = 10", "api.max_body_size"),
        ("[api]\nwebhook_retry_min = 60\nwebhook_retry_max = 1", "api.webhook_retry_min"),
        ("[api]\nlog_events = true", "api.log_events"),
        ("[api]\nunknown = 1", "unknown key 'api.unknown'"),
        ('[[api.webhooks]]\nurl = "ftp://x"\nsecret = "0123456789abcdef"', "api.webhooks[0].url"),
        ('[[api.webhooks]]\nurl = "http://x/"\nsecret = "short"', "api.webhooks[0].secret"),
        (
            '[[api.webhooks]]\nurl = "http://x/"\nsecret = "0123456789abcdef"\nevents = ["opened"]',
            "api.webhooks[0].events[0]",
        ),
        (
            '[[api.webhooks]]\nurl = "http://x/"\nsecret = "0123456789abcdef"\n'
            '[[api.webhooks]]\nurl = "http://x/"\nsecret = "0123456789abcdef"',
            "api.webhooks[1].url",
        ),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={})
    assert words in str(info.value)
