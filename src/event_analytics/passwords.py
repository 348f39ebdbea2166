"""A shared link's password (docs/api.md, "Shared links"): its scrypt hash and the unlock
value a page holds once the password was given.

The password is kept only as ``scrypt$N$r$p$salt$hash`` (hashlib.scrypt: memory-hard, so
a copy of the engine's data costs ~16 MB and tens of milliseconds per guess). Checking it
costs as much, so it is checked once, at unlock; each data request then carries the
unlock value: an HMAC of the link's id and an expiry keyed with the stored hash. So an
unlock works for that link only, ends at its expiry, and ends at once when the link is
revoked (its hash is gone with it). Every comparison is constant-time (hmac.compare_digest).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

# OWASP's scrypt minimum (N=2^17, r=8, p=1) costs 128 MB per check; N=2^14 costs 16 MB,
# which a 2-core box with several query processes can afford per unlock.
N, R, P = 2**14, 8, 1
SALT_BYTES, HASH_BYTES = 16, 32
MIN_LEN, MAX_LEN = 8, 200
# How long one unlock lets a page read: a working day, then the password is asked again.
UNLOCK_TTL_S = 12 * 3600


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    # maxmem above the 128*r*n*p bytes the parameters need (OpenSSL's default is 32 MB).
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * r * n * p, dklen=HASH_BYTES
    )


def hash_password(password: str) -> str:
    """The stored form of ``password``: ``scrypt$N$r$p$salt$hash`` (a fresh salt each time)."""
    salt = secrets.token_bytes(SALT_BYTES)
    return f"scrypt${N}${R}${P}${_b64(salt)}${_b64(_scrypt(password, salt, N, R, P))}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` is the one ``stored`` (from hash_password) was made of."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return False
    # Only the parameters this module writes: a stored value cannot make a check cost more.
    if parts[1:4] != [str(N), str(R), str(P)]:
        return False
    try:
        salt, expected = _unb64(parts[4]), _unb64(parts[5])
    except ValueError:  # binascii.Error is one
        return False
    return hmac.compare_digest(_scrypt(password, salt, N, R, P), expected)


def _mac(stored: str, link_id: str, expires: int) -> str:
    msg = f"{link_id}:{expires}".encode()
    return hmac.new(stored.encode(), msg, hashlib.sha256).hexdigest()


def unlock_value(stored: str, link_id: str, now: float) -> tuple[str, int]:
    """The value a page sends (X-Share-Unlock) after giving the password, and its expiry
    (Unix seconds)."""
    expires = int(now) + UNLOCK_TTL_S
    return f"{expires}.{_mac(stored, link_id, expires)}", expires


def unlock_valid(stored: str, link_id: str, value: str, now: float) -> bool:
    """Whether ``value`` came from unlock_value for this link and hash and has not expired."""
    expires_text, _, mac = value.partition(".")
    if not expires_text.isdigit() or len(expires_text) > 12:
        return False
    expires = int(expires_text)
    if expires <= now or expires > now + UNLOCK_TTL_S:
        return False
    return hmac.compare_digest(mac.encode(), _mac(stored, link_id, expires).encode())
