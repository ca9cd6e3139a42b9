"""Exit policies: when a target node stops climbing the ladder, decided from per-rung logits.
They live with training because ``pipeline train`` chooses each run's policy on its validation
nodes (:func:`choose_policy`); ``pipeline infer`` applies it (stage3_infer imports this module).

A policy sees the logits of rung i for the targets still active and says which of them exit
there; an exited target keeps the answer of its exit rung forever (the public reference
overwrote it on later rungs: ``==`` where ``&`` was meant). Targets that never exit take the
last rung's head. Everything here is pure tensor logic: no model, no LLM, no I/O.

Policies (``--exit``; without it, ``pipeline infer`` uses the policy ``pipeline train`` chose
on the run's validation nodes, :func:`choose_policy`, or fixed with ``train --exit``):
  ``patience:P``    exit at the first rung whose argmax equals that of the previous P rungs
                    (ENGINE uses P = 1);
  ``confidence:T``  exit at the first rung whose max softmax probability is >= T (0 < T <= 1);
  ``layer:I``       exit at rung I (0-based; a fixed depth for every target);
  ``none``          run the full depth (exit at the last rung).

Shapes: S rungs, M targets, C classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.core.errors import InputError

EXIT_FLAG = "--exit"
KINDS = ("patience", "confidence", "layer", "none")


@dataclass(frozen=True)
class ExitPolicy:
    kind: str  # one of KINDS
    value: float | int | None = None  # P, T or I; None for "none"

    def __str__(self) -> str:
        return self.kind if self.value is None else f"{self.kind}:{self.value}"


def parse_exit(spec: str, num_rungs: int | None = None) -> ExitPolicy:
    """Parse an ``--exit`` value; ``num_rungs`` (S) bounds ``layer:I`` and ``patience:P`` when known."""
    usage = "use patience:P (P >= 1), confidence:T (0 < T <= 1), layer:I (0 <= I < rungs) or none"
    text = str(spec).strip().lower()
    kind, _, arg = text.partition(":")
    if kind == "none" and not arg:
        return ExitPolicy("none")
    if kind not in KINDS or kind == "none" or not arg:
        raise InputError(f"{EXIT_FLAG} {spec!r}: unknown exit policy; {usage}")
    try:
        value: float | int = float(arg) if kind == "confidence" else int(arg)
    except ValueError:
        whole = "" if kind == "confidence" else "whole "
        raise InputError(f"{EXIT_FLAG} {spec!r}: '{arg}' is not a {whole}number; {usage}") from None
    if kind == "patience" and value < 1:
        raise InputError(f"{EXIT_FLAG} {spec!r}: patience must be >= 1")
    if kind == "confidence" and not 0.0 < value <= 1.0:
        raise InputError(f"{EXIT_FLAG} {spec!r}: confidence threshold must be in (0, 1]")
    if kind == "layer" and value < 0:
        raise InputError(f"{EXIT_FLAG} {spec!r}: rung index must be >= 0")
    policy = ExitPolicy(kind, value)
    if num_rungs is not None:
        check_policy(policy, num_rungs)
    return policy


def check_policy(policy: ExitPolicy, num_rungs: int) -> None:
    """Refuse a ``layer:I`` outside the checkpoint's S rungs (patience beyond S just means full depth)."""
    if policy.kind == "layer" and policy.value >= num_rungs:
        raise InputError(
            f"{EXIT_FLAG} {policy}: the checkpoint has {num_rungs} rungs (0..{num_rungs - 1}); choose layer:I with I < {num_rungs}"
        )


class ExitTracker:
    """Per-target exit state across rungs, fed one rung at a time by the driver.

    ``update(rung, rows, logits)`` takes the logits (A, C) of the A targets ``rows`` (indices
    into 0..M-1) still active at ``rung`` and returns a bool mask (A,) of those that exit now.
    Exited targets are never written again, whatever later rungs say.
    """

    def __init__(self, policy: ExitPolicy, num_targets: int, num_rungs: int) -> None:
        check_policy(policy, num_rungs)
        self.policy, self.num_rungs = policy, num_rungs
        m = num_targets
        self.exited = torch.zeros(m, dtype=torch.bool)
        self.pred = torch.full((m,), -1, dtype=torch.long)  # (M,) class index at the exit rung
        self.confidence = torch.zeros(m)  # (M,) max softmax at the exit rung
        self.exit_rung = torch.full((m,), -1, dtype=torch.long)  # (M,)
        self._prev = torch.full((m,), -1, dtype=torch.long)  # (M,) argmax at the previous rung
        self._streak = torch.zeros(m, dtype=torch.long)  # (M,) rungs in a row agreeing with _prev

    @property
    def active(self) -> torch.Tensor:
        """(M,) bool: targets still climbing."""
        return ~self.exited

    def update(self, rung: int, rows: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        rows = torch.as_tensor(rows, dtype=torch.long)
        if self.exited[rows].any():
            raise ValueError("update() got targets that already exited")
        probs = torch.softmax(logits.float(), dim=-1)  # (A, C)
        conf, pred = probs.max(dim=-1)  # (A,), (A,)
        same = pred == self._prev[rows]
        streak = torch.where(same, self._streak[rows] + 1, torch.zeros_like(pred))
        self._prev[rows], self._streak[rows] = pred, streak

        kind, value = self.policy.kind, self.policy.value
        if rung >= self.num_rungs - 1:
            leave = torch.ones_like(same)  # the last head answers for everyone left
        elif kind == "patience":
            leave = streak >= value
        elif kind == "confidence":
            leave = conf >= value
        elif kind == "layer":
            leave = torch.full_like(same, rung >= value)
        else:  # none
            leave = torch.zeros_like(same)

        done = rows[leave]
        self.exited[done] = True
        self.pred[done], self.confidence[done] = pred[leave], conf[leave]
        self.exit_rung[done] = rung
        return leave


def decide(policy: ExitPolicy, rung_logits: torch.Tensor) -> ExitTracker:
    """Apply a policy to all rungs at once: ``rung_logits`` (S, M, C) -> the finished tracker.

    Equivalent to feeding the rungs one by one to ``ExitTracker`` with only the active
    targets, which is what the driver does; used to choose thresholds on validation nodes.
    """
    num_rungs, m, _ = rung_logits.shape
    tracker = ExitTracker(policy, m, num_rungs)
    for rung in range(num_rungs):
        rows = torch.nonzero(tracker.active).flatten()
        if len(rows) == 0:
            break
        tracker.update(rung, rows, rung_logits[rung, rows])
    return tracker


# --- choosing a policy on validation nodes (at training time, and in `pipeline bench infer`)

CONFIDENCE_CANDIDATES = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.925, 0.95, 0.975, 0.99)
FIXED_CANDIDATES = ("none", "patience:1", "patience:2")
CANDIDATES = (*FIXED_CANDIDATES, *(f"confidence:{t}" for t in CONFIDENCE_CANDIDATES))
MAX_VAL_REL_DROP = 0.01  # the chosen policy keeps validation accuracy within 1% relative of full depth


def replay_counts(rung_logits: torch.Tensor, labels: torch.Tensor, layers: list[int],
                  specs: tuple[str, ...] = CANDIDATES) -> dict[str, list[float]]:
    """Replay each policy on full-depth logits (S, M, C) of labelled nodes ``labels`` (M,).

    Returns ``{spec: [correct, nodes, LLM layers run]}`` (sums, so that the ranks of a
    ``torchrun`` job can add theirs); the layers run by a node are the LLM state of its exit rung.
    """
    depth = torch.as_tensor(layers, dtype=torch.float64)
    out = {}
    for spec in specs:
        t = decide(parse_exit(spec), rung_logits)
        out[spec] = [float((t.pred == labels).sum()), float(len(labels)), float(depth[t.exit_rung].sum())]
    return out


def _accuracy_and_fraction(counts: dict[str, list[float]], last_layer: int):
    def acc(spec: str) -> float:
        correct, total, _ = counts[spec]
        return correct / total if total else 0.0

    def fraction(spec: str) -> float:
        _, total, layers_run = counts[spec]
        return layers_run / (total * last_layer) if total and last_layer else 1.0

    return acc, fraction


def fixed_policy(counts: dict[str, list[float]], spec: str, last_layer: int) -> dict:
    """The record of a policy fixed by ``train --exit`` (not chosen), with :func:`choose_policy`'s
    evidence on validation; ``counts`` must hold ``none`` and ``spec``."""
    acc, fraction = _accuracy_and_fraction(counts, last_layer)
    base = acc("none")
    return {
        "policy": spec,
        "val_acc": acc(spec),
        "full_depth_val_acc": base,
        "val_rel_drop": (base - acc(spec)) / base if base else 0.0,
        "layer_fraction": fraction(spec),
        "num_val": int(counts[spec][1]),
        "rule": "fixed by train --exit",
    }


def choose_policy(counts: dict[str, list[float]], last_layer: int, max_rel_drop: float = MAX_VAL_REL_DROP) -> dict:
    """The cheapest policy (fewest LLM layers run) whose accuracy is within ``max_rel_drop``
    relative of full depth (``none``); ties go to the more accurate, then the safer (later) one.

    ``counts``: :func:`replay_counts` output, which must include ``none``. Returns the choice
    with its evidence: policy, val_acc, full_depth_val_acc, val_rel_drop, layer_fraction, num_val.
    """
    acc, fraction = _accuracy_and_fraction(counts, last_layer)
    base = acc("none")
    drop = {s: (base - acc(s)) / base if base else 0.0 for s in counts}
    ok = [s for s in counts if drop[s] <= max_rel_drop + 1e-12]  # "none" always qualifies
    order = list(counts)
    best = min(ok, key=lambda s: (fraction(s), -acc(s), -order.index(s)))
    return {
        "policy": best,
        "val_acc": acc(best),
        "full_depth_val_acc": base,
        "val_rel_drop": drop[best],
        "layer_fraction": fraction(best),
        "num_val": int(counts[best][1]),
        "rule": f"cheapest within {100 * max_rel_drop:g}% relative of full-depth validation accuracy",
    }


def describe_choice(choice: dict) -> str:
    """One line on an exit policy chosen on validation (training's log and ``pipeline infer``)."""
    how = choice["rule"] if choice["rule"].startswith("fixed") else f"chosen on {choice['num_val']} validation nodes: {choice['rule']}"
    return (
        f"{choice['policy']} ({how}; val accuracy "
        f"{100 * choice['val_acc']:.2f}% vs {100 * choice['full_depth_val_acc']:.2f}% at full depth, "
        f"{100 * choice['layer_fraction']:.1f}% of the LLM layers)"
    )


def resolve_exit(given: str | None, checkpoint) -> tuple[str, str]:
    """The policy ``pipeline infer`` runs and why: ``--exit`` when given, else the one the run
    chose (or was fixed to) for the checkpoint's seed. Every G-Ladder run stores one per seed, so
    a missing or unreadable one is damage, refused with its file (exit 2), never guessed."""
    if given is not None:
        return given, "given with --exit"
    from pipeline.core import guarded
    from stage2_train.checkpoint import SUMMARY, retrain_hint

    seed, where = checkpoint.seed, checkpoint.path / SUMMARY
    rebuild = f"{retrain_hint(checkpoint.path, checkpoint.config)}, or pass --exit to choose a policy"
    rows = checkpoint.summary.get("per_seed")
    row = next((r for r in rows if isinstance(r, dict) and r.get("seed") == seed), None) if isinstance(rows, list) else None
    choice = row.get("exit_policy") if row is not None else None
    if not isinstance(choice, dict):
        raise guarded.damaged(where, f"holds no exit policy for seed {seed} (damaged or not written by this pipeline)", rebuild)
    try:
        parse_exit(str(choice.get("policy")), num_rungs=len(checkpoint.layers))
    except InputError:
        raise guarded.damaged(where, f"the exit policy of seed {seed}, {choice.get('policy')!r}, is not a policy for this run's "
                                     f"{len(checkpoint.layers)} rungs (damaged or not written by this pipeline)", rebuild) from None
    try:
        why = describe_choice(choice)
    except (KeyError, TypeError, ValueError) as err:
        raise guarded.damaged(where, f"the exit policy of seed {seed} lacks its validation record ({type(err).__name__}: {err}; "
                                     "damaged or not written by this pipeline)", rebuild) from None
    return choice["policy"], f"the run's choice for seed {seed}: {why}"
