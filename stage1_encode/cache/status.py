"""``pipeline encode --status CACHE``: a cache's completion, in words."""

from __future__ import annotations

from pathlib import Path

from pipeline.core.errors import InputError
from stage1_encode.cache.geometry import disk_bytes
from stage1_encode.cache.reader import open_cache


def status_text(path: str | Path) -> tuple[str, bool]:
    """Human summary of a cache's completion for ``pipeline encode --status``; (text, complete)."""
    reader = open_cache(path)
    m = reader.manifest
    total = reader.num_blocks
    missing = reader.missing_blocks()
    lines = [
        f"cache {reader.path}",
        f"  model {m['model']} ({str(m['weights_sha256'])[:12]}), graph {m['graph_source']}, {reader.num_nodes} nodes",
        f"  layers {m['layers']}, pooling {m['pooling']}, max length {m['max_length']}, {m['compute_dtype']} -> {m['storage_dtype']}",
        f"  blocks done {total - len(missing)}/{total} ({m['block_nodes']} nodes each), {disk_bytes(path) / 1e6:.1f} MB on disk",
    ]
    damaged = reader.damaged_blocks()
    for b in sorted(damaged)[:5]:
        lines.append(f"  damaged block {b}: {damaged[b]}")
    if len(damaged) > 5:
        lines.append(f"  ... {len(damaged) - 5} more damaged block(s)")
    if missing:
        try:
            reader.check_complete()
        except InputError as err:
            lines.append("  " + err.message)
    else:
        lines.append("  complete")
    return "\n".join(lines), not missing
