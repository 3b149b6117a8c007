"""Password hashes for the field app's accounts (scrypt from the standard library).

Format: scrypt$N$r$p$SALT$HASH (base64). Only hashes go in the inventory;
`bigbang hash-password` makes one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

N, R, P = 2**14, 8, 1


def hash_password(password: str, *, n: int = N, r: int = R, p: int = P) -> str:
    if not password:
        raise ValueError("an empty password cannot be hashed")
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=32)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str | None) -> bool:
    """True if `password` matches `stored`; False for anything malformed (never raises)."""
    if not stored or not password:
        return False
    try:
        scheme, *fields = stored.split("$")
        if scheme == "scrypt":
            n, r, p, salt, digest = fields
            n_, r_, p_ = int(n), int(r), int(p)
            if n_ > 2**20 or r_ > 32 or p_ > 16:  # refuse hashes that would cost too much to check
                return False
            got = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=n_, r=r_, p=p_,
                                 maxmem=256 * 1024 * 1024, dklen=len(_unb64(digest)))
        elif scheme == "pbkdf2_sha256":
            iterations, salt, digest = fields
            got = hashlib.pbkdf2_hmac("sha256", password.encode(), _unb64(salt), int(iterations),
                                      dklen=len(_unb64(digest)))
        else:
            return False
        return hmac.compare_digest(got, _unb64(digest))
    except (ValueError, TypeError):
        return False


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
