"""Keys shared by the DKIM tests (RSA generation is slow: once per session)."""

from __future__ import annotations

import pytest

from relay.dkim import SigningKey, generate_private_key


@pytest.fixture(scope="session")
def rsa_key() -> SigningKey:
    return SigningKey("shop.test", "r2024", "rsa-sha256", generate_private_key("rsa-sha256"))


@pytest.fixture(scope="session")
def ed_key() -> SigningKey:
    return SigningKey(
        "shop.test", "e2024", "ed25519-sha256", generate_private_key("ed25519-sha256")
    )
