"""A run is bound to the cache it read: the identity recorded at train time, checked on reuse.

``pipeline train`` records ``checkpoint.json["cache_identity"]``: the cache's settings and its
content digest (:func:`stage1_encode.cache.blocks.content_digest`: settings, node ids and the digest of
every block's stored bytes, read from the block marks, so computing it costs one small file
read per block). Infer (and ``bench infer``) refuse a cache whose identity differs from the
recorded one, naming what changed, rather than mix states the ladder was not trained on with
fresh ones. Each reader computes the identity again after reading: an encode that rewrote the
cache meanwhile ends the command with exit 2 and nothing written, never with mixed states.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core.errors import InputError

KEY = "cache_identity"  # the entry of checkpoint.json
# manifest keys recorded next to the digest, so that a change can be named
SETTINGS = ("model", "weights_sha256", "layers", "max_length", "pooling", "compute_dtype", "storage_dtype", "hidden_size",
            "graph_fingerprint", "num_nodes")


def identity_of(cache: str | Path) -> dict:
    """The identity of the cache at ``cache`` now: settings and content digest."""
    from stage1_encode.cache.blocks import content_digest
    from stage1_encode.cache.manifest import read_manifest

    manifest = read_manifest(cache)
    return {**{k: manifest.get(k) for k in SETTINGS}, "digest": content_digest(cache, manifest)}


def _shown(key: str, value) -> str:
    return repr(str(value)[:12] + "...") if key in ("weights_sha256", "graph_fingerprint") and value else repr(value)


def changes(recorded: dict, now: dict) -> list[str]:
    """What differs between two identities, one phrase each (empty: the same cache)."""
    out = [f"{k} {_shown(k, recorded.get(k))} then, {_shown(k, now.get(k))} now" for k in SETTINGS if recorded.get(k) != now.get(k)]
    if not out and recorded.get("digest") != now.get("digest"):
        out.append("its stored states (re-encoded with the same settings, other bytes)")
    return out


def check_bound(cache: str | Path, recorded: dict | None, who: str, fix: str) -> dict | None:
    """Refuse (InputError) a cache that is not the one ``recorded``; returns its identity now.
    ``recorded`` None (the run records no cache identity): nothing to compare."""
    if not isinstance(recorded, dict):
        return None
    now = identity_of(cache)
    diff = changes(recorded, now)
    if diff:
        raise InputError(f"cache {cache}: changed since {who} recorded it ({'; '.join(diff)}); {fix}")
    return now


def check_unchanged(cache: str | Path, before: dict, during: str) -> None:
    """After reading: refuse when an encode rewrote the cache while ``during`` read it."""
    try:
        now = identity_of(cache)
    except InputError as err:  # removed or half-rewritten meanwhile
        raise InputError(f"cache {cache}: rewritten while {during} read it ({err.message}); nothing was written, run it again") from None
    diff = changes(before, now)
    if diff:
        raise InputError(f"cache {cache}: rewritten while {during} read it ({'; '.join(diff)}); nothing was written, run it again "
                         "once the encode has finished")
