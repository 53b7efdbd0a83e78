"""Unit tests: token buckets, lock-out, API-key format and hashing, roles, TOTP windows."""

from __future__ import annotations

import hmac
from pathlib import Path

import pyotp
import pytest

from cvdeploy.errors import UsageError
from cvdeploy.security.auth import (
    hash_key_secret,
    new_api_key,
    parse_api_key,
    totp_match,
    verify_password,
)
from cvdeploy.security.config import SecurityConfig
from cvdeploy.security.ratelimit import Lockout, RateLimiter
from cvdeploy.security.rbac import ROLES, Principal, is_allowed
from cvdeploy.security.store import SecurityStore, validate_name


def test_token_bucket_refills_and_keys_are_independent() -> None:
    rl = RateLimiter(rate=2.0, burst=3)
    assert [rl.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert rl.take("a", 0.0) == pytest.approx(0.5)
    assert rl.take("b", 0.0) == 0.0
    assert rl.take("a", 0.5) == 0.0  # one token back after 0.5 s at 2/s
    small = RateLimiter(rate=1.0, burst=1, max_keys=2)
    for k in "xyz":
        small.take(k, 0.0)
    assert small.take("x", 0.0) == 0.0  # evicted: starts full again (memory stays bounded)


def test_lockout_doubles_and_resets() -> None:
    lo = Lockout(after=2, base_s=10, max_s=25)
    assert lo.failure("u", 0) == 0 and lo.locked_for("u", 0) == 0
    assert lo.failure("u", 0) == 10 and lo.locked_for("u", 5) == 5
    assert lo.failure("u", 11) == 20
    assert lo.failure("u", 40) == 25  # capped
    lo.success("u")
    assert lo.locked_for("u", 41) == 0


def test_api_key_format_and_hash() -> None:
    key_id, secret, full = new_api_key()
    assert full == f"cvd_{key_id}_{secret}" and parse_api_key(full) == (key_id, secret)
    for bad in (
        "",
        "cvd_",
        f"cvd_{key_id}",
        full + "x",
        full.replace("cvd_", "xyz_"),
        f"cvd_{key_id.upper()}_{secret}",
    ):
        assert parse_api_key(bad) is None, bad
    salt = b"s" * 16
    assert hmac.compare_digest(hash_key_secret(secret, salt), hash_key_secret(secret, salt))
    assert hash_key_secret(secret, salt) != hash_key_secret(secret, b"t" * 16)
    assert new_api_key()[2] != full


def test_password_hash_and_unknown_user() -> None:
    from cvdeploy.security.auth import hash_password

    h = hash_password("a long passphrase")
    assert h.startswith("$argon2id$") and verify_password(h, "a long passphrase")
    assert not verify_password(h, "a long passphrasE")
    assert not verify_password(None, "anything")


def test_totp_window() -> None:
    seed = pyotp.random_base32()
    t = 1_700_000_000.0
    code = pyotp.TOTP(seed).at(t)
    step = int(t // 30)
    assert totp_match(seed, code, t) == step
    assert totp_match(seed, code, t + 30) == step  # one step of clock drift is accepted
    assert totp_match(seed, code, t + 90) is None
    assert totp_match(seed, "12345", t) is None and totp_match(seed, "abcdef", t) is None


def test_roles_are_nested_and_scoped() -> None:
    assert ROLES["viewer"] < ROLES["predictor"] < ROLES["operator"] < ROLES["admin"]
    p = Principal("key", "k", "predictor", frozenset({"a"}))
    assert is_allowed(p, "predict", "a") and not is_allowed(p, "predict", "b")
    assert not is_allowed(p, "metrics", None) and is_allowed(p, "read", None)
    assert not is_allowed(Principal("key", "k", "nobody"), "read", None)


def test_names_and_config_validation(tmp_path: Path) -> None:
    for bad in ("..", "../x", "a/b", ".hidden", "", "x" * 65, "a..b", "é"):
        with pytest.raises(UsageError):
            validate_name(bad)
    assert validate_name("yolo-v8.n_1") == "yolo-v8.n_1"
    with pytest.raises(ValueError, match="go together"):
        SecurityConfig(auth_db=tmp_path / "a.db", audit_log=tmp_path / "a.log")


def test_store_replay_is_refused_per_step(tmp_path: Path) -> None:
    store = SecurityStore(tmp_path / "a.db", create=True)
    store.add_user("u", "a long passphrase", role="viewer")
    seed = store.enrol_totp("u").split("secret=")[1].split("&")[0]
    t = 1_700_000_000.0
    code = pyotp.TOTP(seed).at(t)
    assert store.check_login("u", "a long passphrase", code, now=t, require_mfa=True)[1] == "ok"
    assert (
        store.check_login("u", "a long passphrase", code, now=t, require_mfa=True)[1]
        == "totp_replayed"
    )
    older = pyotp.TOTP(seed).at(t - 30)  # an older, never-used code is refused too
    assert (
        store.check_login("u", "a long passphrase", older, now=t, require_mfa=True)[1]
        == "totp_replayed"
    )
    nxt = pyotp.TOTP(seed).at(t + 30)
    assert store.check_login("u", "a long passphrase", nxt, now=t + 30, require_mfa=True)[1] == "ok"
    assert store.check_login("nobody", "x", code, now=t, require_mfa=True)[1] == "bad_password"
