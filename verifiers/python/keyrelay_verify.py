"""Checks keyrelay signed keys offline. Needs only the `cryptography` package.

    keys = Keys.from_jwks(open("jwks.json").read())   # or Keys.from_public_key("base64…")
    revoked = Revocations.load(open("revoked.json").read(), keys)  # optional
    payload = verify(license_key, keys, revoked)       # raises Invalid(reason)

Reasons, checked in this order: malformed, unknown_key_id, bad_signature, expired, revoked.
Run as a program, it reads keys from stdin, one per line, and prints one JSON answer per line.
"""

import base64
import binascii
import hashlib
import json
import re
import sys
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

_B64URL = re.compile(r"[A-Za-z0-9_-]*")


class Invalid(Exception):
    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


def _b64url(text):
    """Canonical unpadded base64url, else None."""
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        return None
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    return raw if base64.urlsafe_b64encode(raw).decode().rstrip("=") == text else None


def _key_id(raw_public):
    x = base64.urlsafe_b64encode(raw_public).decode().rstrip("=")
    thumbprint = '{"crv":"Ed25519","kty":"OKP","x":"%s"}' % x
    digest = hashlib.sha256(thumbprint.encode()).digest()[:8]
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


class Keys:
    """The public keys a key may be signed with: {kid: Ed25519PublicKey}."""

    def __init__(self, by_kid):
        self.by_kid = by_kid

    @classmethod
    def from_jwks(cls, text):
        by_kid = {}
        for jwk in json.loads(text)["keys"]:
            if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519" and "kid" in jwk:
                raw = _b64url(jwk.get("x", ""))
                if raw is not None and len(raw) == 32:
                    by_kid[jwk["kid"]] = Ed25519PublicKey.from_public_bytes(raw)
        return cls(by_kid)

    @classmethod
    def from_public_key(cls, b64):
        raw = base64.b64decode(b64, validate=True)
        return cls({_key_id(raw): Ed25519PublicKey.from_public_bytes(raw)})


def _signed_by(keys, data, signature):
    for key in keys:
        try:
            key.verify(signature, data)
            return True
        except InvalidSignature:
            pass
    return False


class Revocations:
    """The grants of a signed revocation list (GET /signing-keys/revoked)."""

    def __init__(self, grants, sequence):
        self.grants, self.sequence = grants, sequence

    @classmethod
    def load(cls, text, keys):
        served = json.loads(text)
        data, signature = _b64url(served["list"]), _b64url(served["signature"])
        kid = served.get("kid")
        candidates = [k for i, k in keys.by_kid.items() if kid is None or i == kid]
        if data is None or signature is None or not _signed_by(candidates, data, signature):
            raise ValueError("the revocation list is not signed by a trusted key")
        listed = json.loads(data)
        return cls({r["grant_id"] for r in listed["revoked"]}, listed["sequence"])


def verify(key, keys, revocations=None, now=None):
    raw = _b64url(key)
    if raw is None or len(raw) < 1:
        raise Invalid("malformed")
    version = raw[0]
    if version not in (1, 2):
        raise Invalid("malformed")
    at = 9 if version == 2 else 1
    payload, signature = raw[:-64], raw[-64:]
    if len(raw) < 64 or len(payload) < at + 12:
        raise Invalid("malformed")
    numbers = [int.from_bytes(payload[at + i:at + i + 4], "big") for i in (0, 4, 8)]
    ids, pos = [], at + 12
    for _ in range(2):
        if pos >= len(payload) or pos + 1 + payload[pos] > len(payload):
            raise Invalid("malformed")
        try:
            ids.append(payload[pos + 1:pos + 1 + payload[pos]].decode("utf-8"))
        except UnicodeDecodeError:
            raise Invalid("malformed")
        pos += 1 + payload[pos]
    if pos != len(payload):
        raise Invalid("malformed")
    kid = base64.urlsafe_b64encode(payload[1:9]).decode().rstrip("=") if version == 2 else None
    if kid is not None and kid not in keys.by_kid:
        raise Invalid("unknown_key_id")
    candidates = [keys.by_kid[kid]] if kid is not None else list(keys.by_kid.values())
    if not _signed_by(candidates, payload, signature):
        raise Invalid("bad_signature")
    issued, expires, activations = numbers
    if expires and (time.time() if now is None else now) >= expires:
        raise Invalid("expired")
    if revocations is not None and ids[0] in revocations.grants:
        raise Invalid("revoked")
    return {
        "version": version,
        "key_id": kid,
        "grant_id": ids[0],
        "entitlement_id": ids[1],
        "issued_at": issued,
        "expires_at": expires or None,
        "activations_limit": activations or None,
    }


def main(argv):
    args = dict(zip(argv[1::2], argv[2::2]))
    if "--jwks" in args:
        keys = Keys.from_jwks(open(args["--jwks"], encoding="utf-8").read())
    else:
        keys = Keys.from_public_key(args["--public-key"])
    revocations = None
    if "--revocations" in args:
        revocations = Revocations.load(open(args["--revocations"], encoding="utf-8").read(), keys)
    for line in sys.stdin.buffer.read().decode("utf-8").split("\n")[:-1]:
        try:
            answer = dict(valid=True, **verify(line, keys, revocations))
        except Invalid as refusal:
            answer = {"valid": False, "reason": refusal.reason}
        print(json.dumps(answer, ensure_ascii=False))


if __name__ == "__main__":
    main(sys.argv)
