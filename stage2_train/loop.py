"""The training loop for one seed: AdamW, early stopping on the answering head, best weights kept.

The answering head is the last one (``--depth full``), or with ``--depth val`` the head of best
validation accuracy at each epoch (:func:`answer_head`): early stopping then keeps the epoch
whose best head is best, and the seed's depth is that head's rung + 1.

Every architecture has the same signature, ``model(states (n, S, H), sub) -> (S, B, C)``
(S = 1 for the baselines), so one loop serves the ladder and the baselines. On CUDA the
states go to the GPU from pinned memory without blocking and training steps run the model
under bf16 autocast, the loss computed in float32 (:func:`forward`); evaluation (the metrics,
early stopping) runs in float32, as ``pipeline infer`` runs the side network, so the accuracies
training reports are the ones infer reproduces. On CPU everything is plain float32.
Evaluation subgraphs are drawn once (deterministically) and reused every epoch.

Shapes: B targets, S heads, C classes.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch.nn import functional as F

from stage2_train.features import NodeFeatures
from stage2_train.sampling import Sampler, SubgraphBatch, generator
from stage2_train.standardize import training_stats


def seed_everything(seed: int) -> int:
    """Seed Python, numpy and torch; returns the seed (stored with every result)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return seed


def batches(nodes: np.ndarray, size: int, gen: torch.Generator | None = None) -> list[np.ndarray]:
    """Split ``nodes`` into batches, shuffled with ``gen`` when given."""
    if gen is not None:
        nodes = nodes[torch.randperm(len(nodes), generator=gen).numpy()]
    return [nodes[i : i + size] for i in range(0, len(nodes), size)]


def forward(model, x: torch.Tensor, sub: SubgraphBatch, device: str, mixed: bool = True) -> torch.Tensor:
    """``model`` on states ``x`` (n, S, H) and subgraphs ``sub`` on ``device`` -> float32 logits
    (S, B, C); ``mixed``: under bf16 autocast when ``device`` is CUDA."""
    from pipeline.core.devices import autocast, to_device

    with autocast(device) if mixed else contextlib.nullcontext():
        logits = model(to_device(x, device), sub.to(device))
    return logits.float()


def head_losses(logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Weighted sum over heads of the per-head cross-entropy (the multi-exit loss of ENGINE-Early);
    ``weights`` None: the last head's cross-entropy alone (plain ENGINE). logits (S, B, C), y (B,)."""
    if weights is None:
        return F.cross_entropy(logits[-1], y)
    S = logits.shape[0]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.repeat(S), reduction="none")  # (S * B,)
    return (ce.view(S, -1).mean(1) * weights).sum()


def loss_weights(cfg, num_heads: int, device: str) -> torch.Tensor | None:
    """The ``weights`` of :func:`head_losses` for a config: None for ``--loss last-head``, else
    ``--rung-weights`` (default all 1)."""
    if getattr(cfg, "loss", "multi-exit") == "last-head":
        return None
    weights = getattr(cfg, "rung_weights", None)  # only the ladder has several heads to weigh
    return torch.as_tensor(weights if weights else [1.0] * num_heads, dtype=torch.float32, device=device)


def answer_head(val_acc: list[float], depth: str) -> int:
    """Index of the head that answers for a model whose heads score ``val_acc`` (S,) on
    validation: the last for ``full``; for ``val`` the most accurate, ties to the shallower
    (fewer LLM layers)."""
    if depth == "full":
        return len(val_acc) - 1
    return max(range(len(val_acc)), key=lambda i: (val_acc[i], -i))


@dataclass
class EvalSet:
    """Fixed batches of targets (and labels) of one split. Their subgraphs are the sampler's
    evaluation draw, the same on every call, so they are drawn each time the set is read
    rather than kept: kept, they grew with the split (+0.5 GB for 1M targets at 1M nodes)."""

    sampler: Sampler
    targets: list[np.ndarray]
    labels: list[torch.Tensor]

    def __iter__(self):
        """``(subgraph, labels (B,))`` per batch."""
        return ((self.sampler.sample(b), y) for b, y in zip(self.targets, self.labels))

    @property
    def subs(self) -> list[SubgraphBatch]:
        return [sub for sub, _ in self]


def make_eval_set(sampler: Sampler, nodes: np.ndarray, labels: np.ndarray, size: int) -> EvalSet:
    size = len(nodes) if sampler.mode == "full" else size  # full graph: one pass for all targets
    parts = batches(nodes, max(size, 1))
    return EvalSet(sampler, parts, [torch.as_tensor(labels[b]) for b in parts])


@torch.no_grad()
def eval_logits(model, features: NodeFeatures, es: EvalSet, device: str):
    """``(logits (S, B, C) on the CPU, labels (B,))`` for each batch of an evaluation set."""
    model.eval()
    pieces = features.pieces if features.orders_batches else (lambda sub: [sub])  # out of core: cut to the step memory bound
    for sub, y in es:
        yield torch.cat([forward(model, features(p.nodes), p, device, mixed=False) for p in pieces(sub)], dim=1).cpu(), y


@torch.no_grad()
def evaluate(model, features: NodeFeatures, es: EvalSet, device: str, group=None) -> list[float]:
    """Accuracy of every head on an evaluation set: a list of S floats (counts summed over
    the ranks of ``group``, each holding its share of the set, when given)."""
    correct, total = torch.zeros(model.num_rungs, dtype=torch.long), 0
    for logits, y in eval_logits(model, features, es, device):
        correct += (logits.argmax(-1) == y).sum(1)  # (S,)
        total += len(y)
    if group is not None:
        *hits, total = group.sum(correct.tolist() + [total])
        correct = torch.tensor(hits)
    return (correct.double() / max(total, 1)).tolist()


def policy_counts(model, features: NodeFeatures, es: EvalSet, layers: list[int], specs: tuple[str, ...], device: str,
                  group=None) -> dict[str, list[float]]:
    """:func:`stage2_train.exit_policies.replay_counts` of each policy in ``specs`` on an
    evaluation set, over the first ``len(layers)`` heads (a run's chosen depth). Replayed per
    batch and summed (over ranks too), so memory stays one batch of logits."""
    from stage2_train.exit_policies import replay_counts

    counts = {spec: [0.0, 0.0, 0.0] for spec in specs}
    for logits, y in eval_logits(model, features, es, device):
        for spec, c in replay_counts(logits[: len(layers)], y, layers, specs).items():
            counts[spec] = [a + b for a, b in zip(counts[spec], c)]
    if group is not None and group.world_size > 1:
        flat = group.sum([v for c in counts.values() for v in c])
        counts = {spec: flat[3 * k : 3 * k + 3] for k, spec in enumerate(counts)}
    return counts


def exit_policy_on_val(model, features: NodeFeatures, es: EvalSet, layers: list[int], device: str, group=None,
                       test: EvalSet | None = None, fixed: str | None = None) -> dict:
    """The exit policy ``pipeline infer`` uses by default, chosen on the validation set ``es``
    from cached states (no LLM): the cheapest policy, in LLM layers run, within 1% relative of
    full-depth validation accuracy (:func:`stage2_train.exit_policies.choose_policy`), or
    ``fixed`` (``train --exit``) with its validation figures; ``layers`` are the LLM states of
    the rungs the run keeps. With ``test``, the choice also records its accuracy there
    (``test_acc``: what ``pipeline infer`` answers by default; never used to choose)."""
    from stage2_train.exit_policies import CANDIDATES, choose_policy, fixed_policy

    if fixed is not None:
        specs = ("none", fixed) if fixed != "none" else ("none",)
        choice = fixed_policy(policy_counts(model, features, es, layers, specs, device, group), fixed, layers[-1])
    else:
        choice = choose_policy(policy_counts(model, features, es, layers, CANDIDATES, device, group), layers[-1])
    if test is not None:
        correct, total, _ = policy_counts(model, features, test, layers, (choice["policy"],), device, group)[choice["policy"]]
        choice["test_acc"] = correct / total if total else float("nan")
    return choice


def epoch_batches(features: NodeFeatures, sampler: Sampler, nodes: np.ndarray, size: int, gen: torch.Generator,
                  max_batches: int | None = None):
    """The :class:`~stage2_train.step_memory.MicroBatch` es of the first ``max_batches`` batches of an epoch.

    Features that order batches (``orders_batches``: out of core) choose the order, cut
    batches to their step memory bound and read ahead; close the iterator
    (``contextlib.closing``) to stop their reader. Others give one micro-batch per batch. Only the batches returned are
    sampled, so ``gen`` ends in the same state whoever reads.
    """
    from stage2_train.step_memory import MicroBatch

    if features.orders_batches:
        return features.epoch(sampler, nodes, size, gen, max_batches)
    parts = batches(nodes, size, gen)[:max_batches]
    return (MicroBatch(b, sub, features(sub.nodes)) for b in parts for sub in (sampler.sample(b, gen),))


def stop_if_diverged(loss: float, seed: int, epoch: int, cfg, params=()) -> None:
    """Refuse to go on from a non-finite training loss or weights (``params``, after an epoch's
    last step): from there the weights are NaN or infinite, and such a model still predicts a
    label for every node."""
    if math.isfinite(loss) and all(bool(p.isfinite().all()) for p in params):
        return
    from pipeline.core.errors import PipelineError
    from stage2_train.resume import STATE_FILE, state_dir

    what = f"the training loss is {loss}" if not math.isfinite(loss) else "the weights are NaN or infinite after the epoch's last step"
    resume = state_dir(cfg.out)
    again = f"delete {resume}, which holds this run's progress under these flags, and " if (resume / STATE_FILE).is_file() else ""
    raise PipelineError(f"seed {seed}, epoch {epoch}: {what}: training diverged, and nothing was written to --out {cfg.out}. "
                        f"To train again, {again}lower --lr (this run's: {cfg.lr:g}) or --weight-decay ({cfg.weight_decay:g})")


def train_step(model, opt, features: NodeFeatures, sampler: Sampler, b: np.ndarray, labels: np.ndarray,
               weights: torch.Tensor | None, gen: torch.Generator, device: str) -> float:
    """One optimiser step on the targets ``b`` (B,); returns the batch loss."""
    sub = sampler.sample(b, gen)
    return optimise_step(model, opt, sub, features(sub.nodes), labels[b], weights, device)


def optimise_step(model, opt, sub: SubgraphBatch, x: torch.Tensor, y: np.ndarray, weights: torch.Tensor | None, device: str) -> float:
    """One optimiser step on a sampled batch: states ``x`` (n, S, H), labels ``y`` (B,); returns the loss."""
    y = torch.as_tensor(y, device=device)
    logits = forward(model, x, sub, device)  # (S, B, C)
    loss = head_losses(logits, y, weights)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def accumulate_step(model, opt, piece, labels: np.ndarray, weights: torch.Tensor | None, device: str) -> float:
    """Backward of one micro-batch's loss scaled by its ``share`` of the batch; the optimiser
    steps after the batch's ``last`` one (gradients were cleared after the previous step).
    Returns the micro-batch's own loss (mean over its targets)."""
    y = torch.as_tensor(labels[piece.targets], device=device)
    loss = head_losses(forward(model, piece.states, piece.sub, device), y, weights)
    (loss * piece.share).backward()
    if piece.last:
        opt.step()
        opt.zero_grad(set_to_none=True)
    return loss.item()


def time_epoch(model, features: NodeFeatures, sampler: Sampler, train: np.ndarray, labels: np.ndarray, cfg, seed: int,
               max_batches: int | None = None) -> dict:
    """Time one training epoch (no evaluation); with ``max_batches``, time that many and extrapolate.

    Both bench modes call this with the same seed, so they see the same batches and subgraphs.
    """
    from pipeline.core.devices import resolve_device

    seed_everything(seed)
    device = resolve_device(cfg.device)  # "auto" when called outside ``run``
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    weights = torch.ones(model.num_rungs, device=device)
    gen = generator(seed)
    parts = batches(train, len(train) if sampler.mode == "full" else cfg.batch_size, gen)
    timed = parts if max_batches is None else parts[:max_batches]
    t0, losses = time.perf_counter(), []
    for b in timed:
        losses.append(train_step(model, opt, features, sampler, b, labels, weights, gen, device))
    seconds = time.perf_counter() - t0
    return {"batches_timed": len(timed), "batches_per_epoch": len(parts), "seconds_timed": seconds,
            "epoch_s": seconds * len(parts) / max(len(timed), 1), "extrapolated": len(timed) < len(parts), "losses": losses}


@dataclass
class SeedResult:
    seed: int
    best_epoch: int
    epochs_run: int
    val_acc: list[float]  # per head, at the best epoch
    test_acc: list[float]
    train_acc: list[float]
    gates: list[float]
    epoch_s: float  # mean wall time of a training epoch (without evaluation)
    epoch_s_each: list[float] = field(default_factory=list)  # each epoch's (cost.json, not metrics.jsonl: measured)
    exit_policy: dict | None = None  # the ladder's exit policy chosen on validation (exit_policy_on_val)
    state_dict: dict = field(repr=False, default_factory=dict)
    depth: int | None = None  # rungs kept, the answering head is depth - 1 (--depth val); None: every head

    @property
    def answer(self) -> int:
        """Index of the answering head in ``val_acc``/``test_acc``/``train_acc``."""
        return (self.depth or len(self.val_acc)) - 1


def train_seed(
    model: torch.nn.Module,
    features: NodeFeatures,
    sampler: Sampler,
    split: dict[str, np.ndarray],
    labels: np.ndarray,
    cfg,
    seed: int,
    on_epoch: Callable[[dict], None],
    tracker=None,
    group=None,
    layers: list[int] | None = None,
    state=None,
) -> SeedResult:
    """Train one model; ``on_epoch`` receives each epoch's metrics (the JSONL line).

    ``layers``: the LLM state of each rung; given (the ladder), the best model's exit policy is
    chosen on the validation nodes and returned with the result.

    ``group``: the ranks of a ``torchrun`` job (:class:`stage2_train.distributed.Group`; None:
    this process alone). Each rank trains and evaluates on its share of ``split``, gradients
    and counts are summed over ranks, so every rank returns the same result.

    ``state``: the run's :class:`stage2_train.resume.TrainState`; given, the seed continues
    where it was last saved and is saved after epochs (``--state-every``).
    """
    from stage2_train.resume import Progress, kill_point

    from pipeline.core.devices import resolve_device
    from stage2_train.distributed import Group

    group = group or Group()
    device = resolve_device(cfg.device)  # run() resolved it already; "auto" when called directly
    model.to(device)
    mine = group.shares(split, seed)  # this rank's targets (all of them in one process)
    if getattr(model, "scaler", None) is not None:  # --standardize: statistics of the training nodes only
        model.scaler.set_stats(*training_stats(features, mine["train"], group))
    group.broadcast_model(model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    S = model.num_rungs
    weights = loss_weights(cfg, S, device)
    gen = group.generator(seed)  # training subgraphs and batch order; separate from the init RNG
    rule = getattr(cfg, "depth", None) or "full"  # the baselines' single head answers
    val_set = make_eval_set(sampler, mine["val"], labels, cfg.eval_batch_size)
    size = len(split["train"]) if sampler.mode == "full" else cfg.batch_size
    best_val, best_epoch, best_state, wait, epoch_times = -1.0, 0, None, 0, []
    saved = state.progress(seed, model, opt, gen, device) if state is not None else None
    if saved is not None:  # continue after the last saved epoch, RNG streams as they were then
        best_val, best_epoch, best_state, wait, epoch_times = saved.best_val, saved.best_epoch, saved.best_state, saved.wait, saved.epoch_times
        if tracker is not None:
            tracker.advance(saved.epoch)
    first = saved.epoch + 1 if saved is not None else 1  # a state is never saved after the last epoch: one runs at least
    for epoch in range(first, cfg.epochs + 1):
        model.train()
        t0, loss_sum, n_seen = time.perf_counter(), 0.0, 0
        if group.world_size == 1 and features.orders_batches:  # out of core: chunk-grouped batches, read-ahead
            opt.zero_grad(set_to_none=True)
            with contextlib.closing(epoch_batches(features, sampler, mine["train"], size, gen, cfg.max_batches)) as epoch_iter:
                for k, piece in enumerate(epoch_iter):
                    loss = accumulate_step(model, opt, piece, labels, weights, device)
                    loss_sum, n_seen = loss_sum + loss * len(piece.targets), n_seen + len(piece.targets)
                    kill_point(f"seed {seed} epoch {epoch} batch {k + 1}")
        else:
            for k, b in enumerate(group.batches(mine["train"], len(split["train"]), size, gen)):
                if cfg.max_batches is not None and k >= cfg.max_batches:
                    break
                loss = group.train_step(model, opt, features, sampler, b, labels, weights, gen, device)
                loss_sum, n_seen = loss_sum + loss * len(b), n_seen + len(b)
                kill_point(f"seed {seed} epoch {epoch} batch {k + 1}")
        epoch_times.append(time.perf_counter() - t0)
        loss_sum, n_seen = group.sum([loss_sum, n_seen])  # every rank sees the same sum, so all stop together
        stop_if_diverged(loss_sum / max(n_seen, 1), seed, epoch, cfg, model.parameters())
        val = evaluate(model, features, val_set, device, group)
        score = val[answer_head(val, rule)]
        line = {"seed": seed, "epoch": epoch, "loss": loss_sum / max(n_seen, 1), "val_acc": score, "val_acc_heads": val}
        on_epoch(line)
        if tracker is not None:
            tracker.advance(1, loss=line["loss"], val_acc=score)
        if score > best_val:
            best_val, best_epoch, wait = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            wait += 1
        if group.end_epoch(wait >= cfg.patience):
            break
        if state is not None and epoch < cfg.epochs:
            state.save_epoch(seed, model, opt, gen, device, Progress(epoch, best_val, best_epoch, wait, epoch_times, best_state))
    model.load_state_dict(best_state)  # restore the best-validation epoch
    train_set = make_eval_set(sampler, mine["train"], labels, cfg.eval_batch_size)
    test_set = make_eval_set(sampler, mine["test"], labels, cfg.eval_batch_size) if len(split["test"]) else None
    val = evaluate(model, features, val_set, device, group)  # the best epoch's, evaluation draws being fixed
    depth = answer_head(val, rule) + 1
    return SeedResult(
        seed=seed,
        best_epoch=best_epoch,
        epochs_run=epoch,
        val_acc=val,
        test_acc=evaluate(model, features, test_set, device, group) if test_set else [float("nan")] * S,
        train_acc=evaluate(model, features, train_set, device, group),
        gates=[float(g) for g in model.gates().detach().cpu()],
        epoch_s=float(np.mean(epoch_times)),
        epoch_s_each=epoch_times,
        state_dict={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        exit_policy=exit_policy_on_val(model, features, val_set, layers[:depth], device, group, test_set,
                                       fixed=None if getattr(cfg, "exit", "val") == "val" else cfg.exit) if layers else None,
        depth=depth,
    )
