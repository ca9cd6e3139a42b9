"""Which LLM states become ladder rungs: ``--layers all | 0,5,10 | every:K``.

States are numbered as HF's ``hidden_states``: 0 = embedding output, ``num_states - 1`` =
the last layer (after the final norm for decoders). The last state is always included: it
is the plain "LLM embedding" every baseline uses, and the deepest exit of stage 3.
"""

from __future__ import annotations

from pipeline.core.errors import InputError

DEFAULT_RUNGS = 7  # the reference picks 7 of Llama-2-7B's 33 states: [0, 5, 10, 15, 20, 25, 32]


def default_layers(num_states: int, rungs: int = DEFAULT_RUNGS) -> list[int]:
    """About ``rungs`` states spread evenly, including 0 and the last.

    Like the reference, use a round stride ``(num_states - 1) // (rungs - 1)`` from 0 and
    end on the last state: 33 states -> [0, 5, 10, 15, 20, 25, 32]; 31 -> [0, 5, ..., 25, 30];
    7 (MiniLM) -> [0, 1, ..., 6].
    """
    last = num_states - 1
    if num_states <= rungs:
        return list(range(num_states))
    step = max(last // (rungs - 1), 1)
    picked = list(range(0, last, step))[: rungs - 1]
    return picked + [last]


def parse_layers(spec: str | None, num_states: int) -> list[int]:
    """``None``/"default", "all", "0,5,10" or "every:K" -> sorted unique state indices.

    The last state is added if missing. Out-of-range or malformed specs raise InputError
    naming ``--layers`` and the valid range.
    """
    last = num_states - 1
    text = "default" if spec is None else str(spec).strip().lower()
    valid = f"valid states are 0..{last} (0 = embeddings, {last} = last layer)"
    if text == "default":
        return default_layers(num_states)
    if text == "all":
        return list(range(num_states))
    if text.startswith("every:"):
        try:
            k = int(text.split(":", 1)[1])
        except ValueError:
            k = 0
        if k < 1:
            raise InputError(f"--layers {spec}: 'every:K' needs a positive integer K")
        return sorted(set(range(0, num_states, k)) | {last})
    try:
        picked = [int(p) for p in text.replace(" ", "").split(",") if p != ""]
    except ValueError:
        raise InputError(f"--layers {spec}: expected 'all', 'every:K' or comma-separated integers like 0,5,10; {valid}") from None
    if not picked:
        raise InputError(f"--layers {spec}: no layer given; {valid}")
    bad = [p for p in picked if not 0 <= p <= last]
    if bad:
        raise InputError(f"--layers {spec}: layer(s) {', '.join(map(str, bad))} out of range; {valid}")
    return sorted(set(picked) | {last})
