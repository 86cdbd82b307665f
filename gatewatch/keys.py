"""API keys: generation, hashing and the keys file.

The keys file (TOML) holds only SHA-256 hashes of keys, never raw keys::

    [[keys]]
    id = "key_alice_1"          # the principal in events and decisions
    owner = "alice"
    tier = "default"
    scopes = ["read"]
    hash = "sha256:9f86d08..."
    revoked = false             # true: kept for the record, never accepted

Rotation: an owner may hold at most :data:`MAX_ACTIVE_PER_OWNER` (two) active
keys, so a client can switch to a new key before the old one is revoked
(``gatewatch keys rotate`` then ``gatewatch keys revoke``). Gateways re-read
the file when it changes.

API keys are 256-bit random tokens, so a plain SHA-256 is the right hash
(the practice of GitHub and Stripe tokens; a slow password hash protects
low-entropy secrets, which keys are not). Lookup is by hash, so the
comparison itself leaks nothing about a stored key.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

KEY_PREFIX = "gw_"
#: Active keys one owner may hold at once: the current key and its successor.
MAX_ACTIVE_PER_OWNER = 2


class KeysFileError(ValueError):
    """The keys file is missing, not TOML, or has an invalid entry."""


@dataclass(frozen=True)
class ApiKey:
    """One stored key. ``id`` is the principal; ``hash`` is ``sha256:<64 hex>``."""

    id: str
    owner: str
    hash: str
    tier: str = "default"
    scopes: tuple[str, ...] = field(default_factory=tuple)
    revoked: bool = False


def generate_key() -> str:
    """Return a new raw API key: ``gw_`` + 43 URL-safe characters (256 random bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(raw: str) -> str:
    """Return the stored form of a raw key: ``"sha256:" + hex digest`` of its UTF-8 bytes."""
    return "sha256:" + hashlib.sha256(raw.encode()).hexdigest()


def read_entries(path: Path) -> list[ApiKey]:
    """Every key of the file, revoked ones included, in file order.

    Raises :class:`KeysFileError` if the file is unreadable or an entry lacks
    ``id``/``owner``/``hash``, has a malformed hash, or repeats an id or hash.
    """
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise KeysFileError(f"cannot read keys file {path}: {exc}") from exc
    entries: list[ApiKey] = []
    ids: set[str] = set()
    hashes: set[str] = set()
    for n, entry in enumerate(data.get("keys", [])):
        try:
            key = ApiKey(id=str(entry["id"]), owner=str(entry["owner"]), hash=str(entry["hash"]),
                         tier=str(entry.get("tier", "default")),
                         scopes=tuple(str(s) for s in entry.get("scopes", [])),
                         revoked=bool(entry.get("revoked", False)))
        except (KeyError, TypeError) as exc:
            raise KeysFileError(f"{path}: keys[{n}] lacks {exc}") from exc
        algo, _, digest = key.hash.partition(":")
        if algo != "sha256" or len(digest) != 64:
            raise KeysFileError(f"{path}: keys[{n}] hash must be 'sha256:<64 hex>'")
        if key.id in ids or key.hash in hashes:
            raise KeysFileError(f"{path}: keys[{n}] repeats id or hash of another key")
        ids.add(key.id)
        hashes.add(key.hash)
        entries.append(key)
    return entries


def load_keys(path: Path) -> dict[str, ApiKey]:
    """The active (not revoked) keys of a keys file as ``{hash: ApiKey}``.

    Raises :class:`KeysFileError` as :func:`read_entries` does, and when an owner
    holds more than :data:`MAX_ACTIVE_PER_OWNER` active keys.
    """
    active = [k for k in read_entries(path) if not k.revoked]
    per_owner: dict[str, int] = {}
    for key in active:
        per_owner[key.owner] = per_owner.get(key.owner, 0) + 1
        if per_owner[key.owner] > MAX_ACTIVE_PER_OWNER:
            raise KeysFileError(f"{path}: owner {key.owner!r} has more than {MAX_ACTIVE_PER_OWNER} active keys")
    return {k.hash: k for k in active}


def _entry_toml(key: ApiKey) -> str:
    return ("\n[[keys]]\n"
            f"id = {json.dumps(key.id)}\n"
            f"owner = {json.dumps(key.owner)}\n"
            f"tier = {json.dumps(key.tier)}\n"
            f"scopes = {json.dumps(list(key.scopes))}\n"
            f"hash = {json.dumps(key.hash)}\n"
            + ("revoked = true\n" if key.revoked else ""))


def revoke_key(path: Path, key_id: str) -> ApiKey:
    """Mark ``key_id`` revoked (the file is rewritten atomically); return the key.
    Raises :class:`KeysFileError` if there is no such key."""
    path = Path(path)
    entries = read_entries(path)
    if not any(k.id == key_id for k in entries):
        raise KeysFileError(f"{path}: no key {key_id!r}")
    entries = [replace(k, revoked=True) if k.id == key_id else k for k in entries]
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(_entry_toml(k) for k in entries))
    tmp.replace(path)
    return next(k for k in entries if k.id == key_id)


def add_key(path: Path, key_id: str, owner: str, tier: str = "default",
            scopes: tuple[str, ...] = ()) -> str:
    """Create a key, append its hash to the keys file and return the raw key.

    The raw key is returned once and stored nowhere. Raises
    :class:`KeysFileError` if ``key_id`` already exists in the file, or the
    owner already holds :data:`MAX_ACTIVE_PER_OWNER` active keys.
    """
    path = Path(path)
    entries = read_entries(path) if path.exists() else []
    if any(k.id == key_id for k in entries):
        raise KeysFileError(f"{path}: key id {key_id!r} already exists")
    if sum(1 for k in entries if k.owner == owner and not k.revoked) >= MAX_ACTIVE_PER_OWNER:
        raise KeysFileError(f"{path}: {owner!r} already has {MAX_ACTIVE_PER_OWNER} active keys; "
                            f"revoke one first (gatewatch keys revoke ID)")
    raw = generate_key()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(_entry_toml(ApiKey(id=key_id, owner=owner, hash=hash_key(raw), tier=tier, scopes=tuple(scopes))))
    return raw
