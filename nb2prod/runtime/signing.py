"""Manifests and their HMAC signature: every manifest is read and written here, so a
signing key set in `NB2PROD_SIGNING_KEY` is never bypassed."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from typing import Any

from .errors import ArtifactError, ManifestSignatureError
from .stores import _MISSING, Store, read_json, write_json


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- signed manifests -------------------------------------------------------------
#: Environment variable holding the key that signs and verifies manifests.
SIGNING_KEY_ENV = "NB2PROD_SIGNING_KEY"
#: Manifest field holding the signature; everything else in the manifest is signed.
SIGNATURE = "signature"


def _signing_key() -> bytes | None:
    """The manifest signing key, or None when signing is off.

    Whoever can write the store can otherwise swap an artifact *and* its sha256, and
    loading joblib/pickle runs code: with a key, only holders of the key can produce
    manifests that a stage or service will load.  Set-but-empty fails closed.
    """
    raw = os.environ.get(SIGNING_KEY_ENV)
    if raw is None:
        return None
    key = raw.strip()  # Secrets created from files often end in a newline
    if not key:
        raise ArtifactError(f"{SIGNING_KEY_ENV} is set but empty; unset it or give a key")
    return key.encode("utf-8")


def _manifest_mac(manifest: dict, key: bytes) -> str:
    """HMAC-SHA256 over the manifest's canonical JSON, signature field left out."""
    body = {k: v for k, v in manifest.items() if k != SIGNATURE}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False,
                           ensure_ascii=True).encode("utf-8")
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


def sign_manifest(manifest: dict) -> dict:
    """Add the HMAC of ``manifest`` when a signing key is set (in place; returned).

    Without a key any stale signature is dropped, so a manifest never carries a
    signature that no longer matches its content.
    """
    key = _signing_key()
    manifest.pop(SIGNATURE, None)
    if key is not None:
        manifest[SIGNATURE] = {"alg": "hmac-sha256", "value": _manifest_mac(manifest, key)}
    return manifest


def verify_manifest(manifest: Any, where: str) -> None:
    """Refuse an unsigned or wrongly signed manifest when a signing key is set.

    ``where`` names the manifest in the error (its URL).  A no-op without a key:
    the sha256 per artifact then catches corruption only, not tampering.
    """
    key = _signing_key()
    if key is None:
        return
    signature = manifest.get(SIGNATURE) if isinstance(manifest, dict) else None
    if not isinstance(signature, dict) or not isinstance(signature.get("value"), str):
        raise ManifestSignatureError(
            f"manifest {where} is not signed but {SIGNING_KEY_ENV} is set; refusing to load "
            "it (re-run the producing stage with the key set)")
    if signature.get("alg") != "hmac-sha256" or not hmac.compare_digest(
            signature["value"], _manifest_mac(manifest, key)):
        raise ManifestSignatureError(
            f"manifest {where} has a wrong signature for {SIGNING_KEY_ENV}; refusing to load "
            "it (tampered with, or signed with another key)")


def read_manifest(store: Store, key: str, default: Any = _MISSING) -> Any:
    """``read_json`` of a manifest, verified against the signing key (see above)."""
    manifest = read_json(store, key, default)
    if manifest is not default or default is _MISSING:
        verify_manifest(manifest, store.url(key))
    return manifest


def write_manifest(store: Store, key: str, manifest: dict) -> None:
    """Sign (when a key is set) and write a manifest atomically."""
    write_json(store, key, sign_manifest(manifest), atomic=True)
