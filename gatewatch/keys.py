"""API keys: generation, hashing and the keys file.

The keys file (TOML) holds only SHA-256 hashes of keys, never raw keys::

    [[keys]]
    id = "key_alice_1"          # the principal in events and decisions
    owner = "alice"
    tier = "default"
    scopes = ["read"]
    hash = "sha256:9f86d08..."

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
from dataclasses import dataclass, field
from pathlib import Path

KEY_PREFIX = "gw_"


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


def generate_key() -> str:
    """Return a new raw API key: ``gw_`` + 43 URL-safe characters (256 random bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(raw: str) -> str:
    """Return the stored form of a raw key: ``"sha256:" + hex digest`` of its UTF-8 bytes."""
    return "sha256:" + hashlib.sha256(raw.encode()).hexdigest()


def load_keys(path: Path) -> dict[str, ApiKey]:
    """Read a keys file into ``{hash: ApiKey}``.

    Raises :class:`KeysFileError` if the file is unreadable or an entry lacks
    ``id``/``owner``/``hash``, has a malformed hash, or repeats an id or hash.
    """
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise KeysFileError(f"cannot read keys file {path}: {exc}") from exc
    keys: dict[str, ApiKey] = {}
    ids: set[str] = set()
    for n, entry in enumerate(data.get("keys", [])):
        try:
            key = ApiKey(id=str(entry["id"]), owner=str(entry["owner"]), hash=str(entry["hash"]),
                         tier=str(entry.get("tier", "default")),
                         scopes=tuple(str(s) for s in entry.get("scopes", [])))
        except (KeyError, TypeError) as exc:
            raise KeysFileError(f"{path}: keys[{n}] lacks {exc}") from exc
        algo, _, digest = key.hash.partition(":")
        if algo != "sha256" or len(digest) != 64:
            raise KeysFileError(f"{path}: keys[{n}] hash must be 'sha256:<64 hex>'")
        if key.id in ids or key.hash in keys:
            raise KeysFileError(f"{path}: keys[{n}] repeats id or hash of another key")
        ids.add(key.id)
        keys[key.hash] = key
    return keys


def add_key(path: Path, key_id: str, owner: str, tier: str = "default",
            scopes: tuple[str, ...] = ()) -> str:
    """Create a key, append its hash to the keys file and return the raw key.

    The raw key is returned once and stored nowhere. Raises
    :class:`KeysFileError` if ``key_id`` already exists in the file.
    """
    path = Path(path)
    if path.exists() and any(k.id == key_id for k in load_keys(path).values()):
        raise KeysFileError(f"{path}: key id {key_id!r} already exists")
    raw = generate_key()
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = (
        "\n[[keys]]\n"
        f"id = {json.dumps(key_id)}\n"
        f"owner = {json.dumps(owner)}\n"
        f"tier = {json.dumps(tier)}\n"
        f"scopes = {json.dumps(list(scopes))}\n"
        f"hash = {json.dumps(hash_key(raw))}\n"
    )
    with path.open("a") as fh:
        fh.write(entry)
    return raw
