"""The training loop of the fine-tuning archs for one seed: the LLM runs inside every step.

Each target is classified from its own text (no neighbours): the node's token ids (cut as
``pipeline encode`` cuts them, the cache's max length) through :class:`TextClassifier`.
Only the training nodes' labels enter the loss; validation accuracy only chooses the epoch
kept (early stopping, as the other archs); test labels are read only to score the kept model.

``train_acc`` is the running accuracy over the kept epoch's training batches (model in
training mode, changing within the epoch): a second pass over every training text would
cost another LLM epoch.

Shapes: B texts, C classes.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Callable

import numpy as np
import torch
from torch.nn import functional as F

from stage2_train.loop import SeedResult, batches, stop_if_diverged
from stage2_train.sampling import generator


class TextBatches:
    """Token ids of every node, cut to the cache's max length, padded per batch."""

    def __init__(self, stepper, texts: list[str], max_length: int) -> None:
        from stage1_encode.text_clip import token_ids

        self.stepper = stepper
        self.ids = token_ids(stepper.loaded.tokenizer, list(texts), max_length)

    def __call__(self, nodes: np.ndarray):
        """A right-padded :class:`~stage1_encode.stepping.TokenBatch` of ``nodes`` (B,)."""
        return self.stepper.pad([self.ids[i] for i in nodes.tolist()])


@torch.no_grad()
def predict_nodes(model, texts: TextBatches, nodes: np.ndarray, batch_size: int) -> torch.Tensor:
    """(len(nodes), C) logits in eval mode; nodes sorted by token count so batches pad little."""
    model.eval()
    order = np.argsort([len(texts.ids[i]) for i in nodes.tolist()], kind="stable")
    out = None
    for part in batches(np.arange(len(nodes))[order], batch_size):
        logits = model(texts(nodes[part]))[0].float().cpu()  # (B, C)
        if out is None:
            out = torch.empty(len(nodes), logits.shape[-1])
        out[torch.as_tensor(part)] = logits
    return out if out is not None else torch.empty(0, 0)


def epoch_batches(num_train: int, cfg) -> int:
    """Training batches an epoch runs (the progress bar's steps per epoch)."""
    full = math.ceil(num_train / cfg.batch_size)
    return full if cfg.max_batches is None else min(full, cfg.max_batches)


def accuracy(model, texts: TextBatches, nodes: np.ndarray, labels: np.ndarray, batch_size: int) -> float:
    if len(nodes) == 0:
        return float("nan")
    pred = predict_nodes(model, texts, nodes, batch_size).argmax(-1).numpy()
    return float((pred == labels[nodes]).mean())


def train_finetune_seed(model, texts: TextBatches, split: dict[str, np.ndarray], labels: np.ndarray, cfg, seed: int,
                        on_epoch: Callable[[dict], None], tracker=None, on_first_loss: Callable | None = None,
                        state=None) -> SeedResult:
    """Train one :class:`~stage2_train.finetune_model.TextClassifier`; ``on_epoch`` receives
    each epoch's metrics (the JSONL line); ``on_first_loss(loss)`` sees the first batch's loss
    before its backward (the ledger counts the parameters that backward touches).

    ``state``: the run's :class:`stage2_train.resume.TrainState`; given, the seed continues
    where it was last saved (adapter or LLM and head, AdamW, RNG streams) and is saved after
    epochs (``--state-every``), so a rerun after a kill ends as an uninterrupted run."""
    from stage2_train.resume import Progress, kill_point

    device = cfg.device
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = generator(seed)  # batch order, separate from the init RNG
    train = split["train"]
    best_val, best_epoch, best_state, best_train, wait, epoch_times = -1.0, 0, None, float("nan"), 0, []
    saved = state.progress(seed, model, opt, gen, device) if state is not None else None
    if saved is not None:  # continue after the last saved epoch, RNG streams as they were then
        best_val, best_epoch, best_state, wait, epoch_times = saved.best_val, saved.best_epoch, saved.best_state, saved.wait, saved.epoch_times
        best_train = saved.best_train
        if tracker is not None:
            tracker.advance(saved.epoch * epoch_batches(len(train), cfg))
    epoch = 0
    for epoch in range(saved.epoch + 1 if saved is not None else 1, cfg.epochs + 1):  # a state is never saved after the last epoch
        model.train()
        t0, loss_sum, hits, seen = time.perf_counter(), 0.0, 0, 0
        for k, b in enumerate(batches(train, cfg.batch_size, gen)):
            if cfg.max_batches is not None and k >= cfg.max_batches:
                break
            y = torch.as_tensor(labels[b], device=device)
            logits = model(texts(b))[0]  # (B, C)
            loss = F.cross_entropy(logits, y)
            loss_value = loss.item()
            stop_if_diverged(loss_value, seed, epoch, cfg)  # each batch: an LLM epoch is long
            if on_first_loss is not None:
                on_first_loss(loss)
                on_first_loss = None
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss_value * len(b)
            hits += int((logits.argmax(-1) == y).sum())
            seen += len(b)
            if tracker is not None:
                tracker.advance(1, loss=loss_sum / seen)
            kill_point(f"seed {seed} epoch {epoch} batch {k + 1}")
        epoch_times.append(time.perf_counter() - t0)
        stop_if_diverged(loss_sum / max(seen, 1), seed, epoch, cfg, trainable)
        val = accuracy(model, texts, split["val"], labels, cfg.eval_batch_size)
        line = {"seed": seed, "epoch": epoch, "loss": loss_sum / max(seen, 1), "val_acc": val, "val_acc_heads": [val],
                "train_acc_running": hits / max(seen, 1)}
        on_epoch(line)
        if tracker is not None:
            tracker.advance(0, val_acc=val)
        if val > best_val:
            best_val, best_epoch, best_train, wait = val, epoch, hits / max(seen, 1), 0
            best_state = copy.deepcopy(model.trained_state())
        else:
            wait += 1
        if wait >= cfg.patience:
            break
        if state is not None and epoch < cfg.epochs:
            state.save_epoch(seed, model, opt, gen, device, Progress(epoch, best_val, best_epoch, wait, epoch_times, best_state, best_train))
    model.load_trained_state(best_state)  # the best-validation epoch
    test = accuracy(model, texts, split["test"], labels, cfg.eval_batch_size)
    return SeedResult(
        seed=seed, best_epoch=best_epoch, epochs_run=epoch, val_acc=[best_val], test_acc=[test], train_acc=[best_train],
        gates=[], epoch_s=float(np.mean(epoch_times)), epoch_s_each=epoch_times, state_dict=best_state,
    )
