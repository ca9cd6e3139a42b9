"""The encode cache: the only package that knows its format (writer and reader).

Layout of ``CACHE_DIR`` (a Zarr v3 group plus two JSON files and a marker folder)::

    zarr.json             group metadata
    states/               float16 (or float32, or int8) array (N, S, H): pooled LLM state of
                          rung s for node n; chunks (chunk_nodes, S, H), no compressor
    scales/               int8 caches only: float32 (N, S), the absmax scale of each int8 row
                          (state s of node n is ``states[n, s] * scales[n, s]``); chunks
                          (chunk_nodes, S), so a block's scales share its chunks' node rows
    node_ids/             (N,) the user's node ids (int64 or string), in graph order
    text_hashes/          (N, 16) uint8: BLAKE2b-128 of each node's UTF-8 text, in graph order
                          (what ``pipeline encode --reuse`` compares)
    manifest.json         format and format_version, what makes the cache reproducible
                          (``IDENTITY_KEYS``), and ``self_check``: the first texts' deviation
                          from the model's own forward (stage1_encode/self_check.py)
    encode_config.json    the resolved ``pipeline encode`` config that created it
    blocks/000012.done    completion mark of node block 12 (written after its data)
    .pipeline-artifact.json  the ownership marker (kind "cache"; pipeline/core/ownership.py)

Modules, each importable on its own:

- ``geometry``: chunks, blocks and shards (which rows live where);
- ``manifest``: identity, manifest, format version, the commands that (re)fill a cache;
- ``quantize``: storage dtypes and int8 quantization;
- ``blocks``: block marks, damage detection, the content digest, encode cost;
- ``writer``: creating a cache and committing blocks;
- ``raw``: chunk files read directly from their raw bytes;
- ``reader``: ``open_cache`` and the memory budget of every reader;
- ``status``: the ``--status`` text.
"""
