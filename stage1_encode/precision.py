"""One precision per cache: the LLM re-runs in the compute dtype the cache was encoded in.

``pipeline infer``, ``pipeline train --no-cache`` and the benchmarks run the frozen LLM
again on texts whose cached states the side network was trained on. States computed in
another dtype differ from the cached ones (float32 against a bfloat16 cache moved infer's
confidences by up to 3.7e-3 on a 200-node Cora slice), so the manifest's ``compute_dtype`` is used;
an explicit ``--dtype`` that differs is refused unless ``--allow-dtype-mismatch``.
"""

from __future__ import annotations

from pipeline.core.errors import InputError

COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
DTYPE_HELP = ("LLM compute dtype: float32, bfloat16 or float16. Default: the one the cache was encoded in "
              "(another is refused unless --allow-dtype-mismatch).")
MISMATCH_HELP = ("Run the LLM in a --dtype other than the cache's (fresh states then differ slightly from the "
                 "cached ones); recorded in the outputs.")


def dtype_problem(value: str | None, flag: str = "--dtype") -> str | None:
    """The message for a ``--dtype`` value that is not a compute dtype, or None."""
    if value is None or value in COMPUTE_DTYPES:
        return None
    return f"{flag} {value}: choose one of {', '.join(COMPUTE_DTYPES)} (default: the cache's)"


def cache_compute_dtype(manifest: dict, requested: str | None, allow_mismatch: bool, cache: str) -> str:
    """The dtype to load the LLM in: the manifest's, or ``requested`` when it agrees or a
    mismatch is allowed (warned); a disagreeing ``requested`` otherwise raises InputError
    naming both dtypes."""
    recorded = manifest["compute_dtype"]
    if requested is None or requested == recorded:
        return recorded
    if not allow_mismatch:
        raise InputError(
            f"--dtype {requested}: cache {cache} was encoded in {recorded}; the LLM must run in {recorded} to "
            f"reproduce the states training read. Drop --dtype (uses {recorded}), or pass --allow-dtype-mismatch "
            f"to run in {requested} anyway (recorded in the outputs)"
        )
    from pipeline.core.progress import warn

    warn(f"--allow-dtype-mismatch: the LLM runs in {requested}, cache {cache} was encoded in {recorded}; "
         "fresh states will differ slightly from the cached ones")
    return requested
