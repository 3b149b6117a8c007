"""Password hashes for the field app's accounts (scrypt from the standard library).

Format: scrypt$N$r$p$SALT$HASH (base64), or pbkdf2_sha256$ITERATIONS$SALT$HASH. Only
hashes go in the inventory; `bigbang hash-password` makes one. The cost follows OWASP's
password storage guidance: scrypt with r=8 and N*p at least 2^14*5 (OWASP's minimum
configurations, from N=2^17/p=1 to N=2^13/p=10; the default is N=2^14, r=8, p=5: 16 MiB),
or PBKDF2-HMAC-SHA256 with at least 600,000 iterations; `cost_problem` names a hash below that floor (the inventory's
validation refuses it) and such a hash never verifies.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

N, R, P = 2**14, 8, 5
MIN_SCRYPT_N, MIN_SCRYPT_R, MIN_SCRYPT_NP = 2**13, 8, 2**14 * 5
MIN_PBKDF2_ITERATIONS = 600_000
MAXMEM = 256 * 1024 * 1024


def cost_problem(stored: str) -> str | None:
    """Why `stored` is below the floor (or too costly to check), or None when its cost is right."""
    scheme, *fields = stored.split("$")
    try:
        if scheme == "scrypt":
            n, r, p = (int(f) for f in fields[:3])
            if n < MIN_SCRYPT_N or r < MIN_SCRYPT_R or p < 1 or n * p < MIN_SCRYPT_NP:
                return (f"scrypt N={n}, r={r}, p={p} is below current guidance (r >= {MIN_SCRYPT_R}, "
                        f"N >= {MIN_SCRYPT_N} and N*p >= {MIN_SCRYPT_NP})")
            if n > 2**20 or r > 32 or p > 16 or n & (n - 1):
                return f"scrypt N={n}, r={r}, p={p} is not a usable cost (N a power of two up to 2^20, r <= 32, p <= 16)"
        elif scheme == "pbkdf2_sha256":
            iterations = int(fields[0])
            if iterations < MIN_PBKDF2_ITERATIONS:
                return f"PBKDF2 with {iterations:,} iterations is below current guidance ({MIN_PBKDF2_ITERATIONS:,})"
            if iterations > 10_000_000:
                return f"PBKDF2 with {iterations:,} iterations would take too long to check"
        else:
            return f"unknown hash scheme '{scheme}'"
    except (ValueError, IndexError):
        return "malformed hash"
    return None


def hash_password(password: str, *, n: int = N, r: int = R, p: int = P) -> str:
    if not password:
        raise ValueError("an empty password cannot be hashed")
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=MAXMEM, dklen=32)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str | None) -> bool:
    """True if `password` matches `stored`; False for anything malformed (never raises)."""
    if not stored or not password:
        return False
    if cost_problem(stored):
        return False
    try:
        scheme, *fields = stored.split("$")
        if scheme == "scrypt":
            n, r, p, salt, digest = fields
            got = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p),
                                 maxmem=2 * 128 * int(r) * int(n) + MAXMEM, dklen=len(_unb64(digest)))
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
