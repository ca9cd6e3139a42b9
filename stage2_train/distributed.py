"""Training on several processes: ``torchrun --nproc-per-node N -m pipeline train ...``.

torchrun starts N copies of ``pipeline train`` and sets ``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK`` (and the rendezvous address); :func:`init_group` joins them into one process
group (gloo on CPU, nccl with ``--device cuda``), with ``--dist-timeout`` seconds for joining
and for every collective. Per seed, each rank:

- **targets**: takes its share of every split, the seed-shuffled node list strided by rank
  (:meth:`Group.shares`): disjoint, sizes differing by at most one, the same on every run;
- **reads** only the cache rows of its targets' subgraphs (:class:`ShardFeatures`; ego: the
  targets and their neighbours, read once; rwr walks may reach further rows, read on first
  use; ``--sampler full`` needs every row on every rank);
- **steps**: every rank runs the same number of steps an epoch, ``ceil(ceil(T / W) / b)``
  with T training targets, W ranks and local batches of ``b = ceil(batch_size / W)``; a
  rank whose share runs out pads with empty batches (no gradient). So ``--batch-size`` is
  the global batch, as with one process;
- **gradients**: one all-reduce (sum) per step of every gradient, the loss and the number
  of targets; dividing by that number gives the gradient of the mean loss over the step's
  global batch, i.e. what one process computes on the same targets. Each rank then runs
  the same AdamW step on the same numbers, so the weights stay identical on all ranks;
- **metrics**: correct counts and losses summed over ranks, so every rank sees the same
  accuracies; rank 0's early-stopping decision is broadcast.

Only rank 0 writes the run folder and logs (the others' console is silenced; errors still
print). Failures: a rank that raises prints its error naming the rank and exits non-zero;
torchrun then stops the others (SIGTERM, turned into a clean error here so rank 0 removes
its half-written folder). A rank that hangs makes the others' next collective fail after
``--dist-timeout`` seconds.

Shapes: N graph nodes, n batch nodes, S rungs, H LLM width, W ranks.
"""

from __future__ import annotations

import math
import os
import signal
import time
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from pipeline.core.errors import InputError, PipelineError
from stage2_train.loop import batches, forward, generator, head_losses, train_step

# Test hooks (tests/test_train_distributed.py), read after each epoch: the rank named by
# PIPELINE_TEST_KILL_RANK dies at once (os._exit(1): no cleanup, like a SIGKILL); the rank
# named by PIPELINE_TEST_HANG_RANK stops answering (sleeps), so the others time out.
KILL_ENV, HANG_ENV = "PIPELINE_TEST_KILL_RANK", "PIPELINE_TEST_HANG_RANK"


def world_from_env() -> tuple[int, int, int]:
    """(world size, rank, local rank) from torchrun's variables; (1, 0, 0) outside torchrun."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise InputError("WORLD_SIZE/RANK/LOCAL_RANK: not integers; start distributed training with `torchrun`") from None
    if world > 1 and not 0 <= rank < world:
        raise InputError(f"RANK {rank}: must be in 0..WORLD_SIZE-1 ({world - 1}); start distributed training with `torchrun`")
    return world, rank, local


@dataclass
class Group:
    """The ranks of one job (``world_size`` 1: this process alone, every collective a no-op)."""

    rank: int = 0
    world_size: int = 1
    timeout_s: float = 300.0
    device: str = "cpu"  # where collective tensors live: cpu (gloo) or cuda:LOCAL_RANK (nccl)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def name(self) -> str:
        return f"rank {self.rank} of {self.world_size}"

    # --- work split
    def shares(self, split: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
        """This rank's sorted targets of every split: the seed-shuffled list strided by rank."""
        if self.world_size == 1:
            return split
        out = {}
        for k, nodes in split.items():
            perm = np.random.default_rng([seed, len(nodes)]).permutation(len(nodes))  # same on every rank
            out[k] = np.sort(nodes[perm[self.rank :: self.world_size]])
        return out

    def generator(self, seed: int) -> torch.Generator:
        """Training randomness of this rank (batch order, sampled subgraphs); one process: ``generator(seed)``."""
        return generator(seed * self.world_size + self.rank)

    def batches(self, share: np.ndarray, total: int, size: int, gen: torch.Generator) -> list[np.ndarray]:
        """One epoch's batches of this rank: the same count on every rank (empty ones pad a short share)."""
        local = math.ceil(size / self.world_size)
        parts = batches(share, local, gen)
        steps = math.ceil(math.ceil(total / self.world_size) / local)
        return parts + [share[:0]] * (steps - len(parts))

    # --- collectives
    def _collective(self, what: str, fn):
        t0 = time.perf_counter()
        try:
            return fn()
        except Exception as err:  # gloo/nccl raise when a peer is gone or the timeout passed
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise PipelineError(
                f"{self.name}: {what} with the other ranks failed after {time.perf_counter() - t0:.1f}s: another rank "
                f"died or did not answer within --dist-timeout {self.timeout_s:g}s (see its error above) [{first}]"
            ) from err

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (float64: counts stay exact)."""
        if self.world_size == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        self._collective("summing metrics", lambda: dist.all_reduce(t))
        return t.cpu().tolist()

    def broadcast_model(self, model: torch.nn.Module) -> None:
        """Rank 0's weights on every rank (they start equal from the seed; this makes sure)."""
        if self.world_size == 1:
            return
        for t in model.state_dict().values():
            self._collective("broadcasting the weights", lambda t=t: dist.broadcast(t.data, 0))

    def end_epoch(self, stop: bool) -> bool:
        """After each epoch: rank 0's early-stopping decision, the same on every rank."""
        if self.world_size == 1:
            return stop
        _fault_hooks(self.rank)
        flag = torch.tensor([1 if stop else 0], device=self.device)
        self._collective("agreeing on early stopping", lambda: dist.broadcast(flag, 0))
        return bool(flag.item())

    def train_step(self, model, opt, features, sampler, b: np.ndarray, labels: np.ndarray,
                   weights: torch.Tensor | None, gen: torch.Generator, device: str) -> float:
        """One synchronised optimiser step on this rank's targets ``b`` (B_r,); returns the mean
        loss of the step's global batch. One process: exactly :func:`stage2_train.loop.train_step`."""
        if self.world_size == 1:
            return train_step(model, opt, features, sampler, b, labels, weights, gen, device)
        params = [p for p in model.parameters() if p.requires_grad]
        opt.zero_grad(set_to_none=True)
        loss_sum = 0.0
        if len(b):  # an empty (padding) batch contributes nothing but still joins the all-reduce
            sub = sampler.sample(b, gen)
            y = torch.as_tensor(labels[b], device=device)
            logits = forward(model, features(sub.nodes), sub, device)  # (S, B_r, C)
            loss = head_losses(logits, y, weights) * len(b)  # sum over this rank's targets
            loss.backward()
            loss_sum = loss.item()
        # one buffer: every gradient (zeros where none), a has-gradient flag per parameter, loss, count
        grads = [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), device=p.device) for p in params]
        flags = torch.tensor([float(p.grad is not None) for p in params] + [loss_sum, float(len(b))], device=device)
        flat = torch.cat(grads + [flags]).to(self.device)
        self._collective("the gradient all-reduce", lambda: dist.all_reduce(flat))
        flat = flat.to(device)
        count = flat[-1].item()
        offset = 0
        for i, p in enumerate(params):
            n = p.numel()
            # a parameter no rank computed a gradient for stays without one (AdamW skips it, as in one process)
            p.grad = (flat[offset : offset + n] / count).view_as(p).clone() if flat[-2 - len(params) + i] > 0 else None
            offset += n
        opt.step()
        return flat[-2].item() / count


def init_group(device: str, timeout_s: float) -> Group | None:
    """Join torchrun's process group; None outside torchrun (or with one process)."""
    world, rank, local = world_from_env()
    if world == 1:
        return None
    cuda = device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on rank {rank}; use --device cpu (gloo)")
    backend, coll_device = ("nccl", f"cuda:{local}") if cuda else ("gloo", "cpu")
    if cuda:
        torch.cuda.set_device(local)
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s), rank=rank, world_size=world)
    except Exception as err:
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        raise PipelineError(
            f"rank {rank} of {world}: could not join the {backend} process group at {where} within "
            f"--dist-timeout {timeout_s:g}s: {str(err).strip().splitlines()[0] if str(err).strip() else err!r}"
        ) from err
    group = Group(rank=rank, world_size=world, timeout_s=timeout_s, device=coll_device)
    if not group.is_main:
        from pipeline.core import progress

        progress.console.quiet = True  # rank 0 logs; the others print only errors
    signal.signal(signal.SIGTERM, _stop_handler(group))
    return group


def close_group(group: Group | None, failed: bool) -> None:
    """Leave the process group (after a failure the peers may be gone: just let the process end)."""
    if group is None:
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # shutting down: a late SIGTERM just ends the process
    if not failed and dist.is_initialized():
        dist.destroy_process_group()


def _stop_handler(group: Group):
    def handler(signum, frame):
        raise PipelineError(f"{group.name}: stopped by SIGTERM (torchrun stops every rank when one fails: see its error)")

    return handler


def _fault_hooks(rank: int) -> None:
    if os.environ.get(KILL_ENV) == str(rank):
        os._exit(1)
    if os.environ.get(HANG_ENV) == str(rank):
        time.sleep(3600)


class ShardFeatures:
    """``features(nodes (n,)) -> (n, S, H)`` float32 from the cache rows this rank holds.

    :meth:`load` reads rows in node order (``CacheReader.read_rows``, never the whole cache)
    and keeps them; a call asking for rows not loaded yet reads them first.
    """

    orders_batches = False

    def __init__(self, data) -> None:
        self.data, self.reader, self.positions = data, data.reader, data.positions
        self.slot = torch.full((self.reader.num_nodes,), -1, dtype=torch.long)  # (N,) row of each held node
        self.rows: torch.Tensor | None = None  # (held, S, H) in the storage dtype

    def load(self, nodes: np.ndarray) -> None:
        nodes = np.unique(np.asarray(nodes, dtype=np.int64))
        new = nodes[self.slot[torch.from_numpy(nodes)].numpy() < 0]
        if len(new) == 0:
            return
        block = torch.from_numpy(np.ascontiguousarray(self.reader.read_rows(new, rungs=self.positions)))
        if not torch.isfinite(block).all():
            raise InputError(f"cache {self.data.cache_path}: holds non-finite values; re-encode with fp32 storage")
        held = 0 if self.rows is None else len(self.rows)
        self.slot[torch.from_numpy(new)] = torch.arange(held, held + len(new))
        self.rows = block if self.rows is None else torch.cat([self.rows, block])

    def __call__(self, nodes: torch.Tensor) -> torch.Tensor:
        if bool((self.slot[nodes] < 0).any()):
            self.load(nodes.numpy())
        return self.rows[self.slot[nodes]].float()

    def stats(self) -> list[float]:
        """[rows held, bytes held] (the rungs used, in the storage dtype)."""
        return [0, 0] if self.rows is None else [len(self.rows), self.rows.nbytes]


def rows_needed(sampler, targets: np.ndarray) -> np.ndarray:
    """Cache rows the subgraphs of ``targets`` (B,) use: the nodes within ``--hops`` of them
    (exactly the ego subgraphs, or a superset with ``--fanout``; rwr walks may go further,
    read on first use); every node for ``--sampler full``."""
    if sampler.mode == "full":
        return np.arange(sampler.num_nodes)
    seen = front = torch.unique(torch.as_tensor(np.asarray(targets, dtype=np.int64)))
    for _ in range(sampler.hops if sampler.mode == "ego" else 1):
        deg = sampler.deg[front]
        offset = torch.arange(int(deg.sum())) - torch.repeat_interleave(torch.cumsum(deg, 0) - deg, deg)
        neigh = torch.unique(sampler.col[torch.repeat_interleave(sampler.rowptr[front], deg) + offset])
        front = neigh[~torch.isin(neigh, seen)]  # expand only the nodes first reached at this hop
        seen = torch.unique(torch.cat([seen, front]))
    return seen.numpy()


def gather_stats(group: Group, stats: list[float]) -> list[list[float]]:
    """Every rank's ``stats`` (a list of numbers), in rank order, on every rank."""
    k = len(stats)
    t = torch.zeros(group.world_size * k, dtype=torch.float64, device=group.device)
    t[group.rank * k : (group.rank + 1) * k] = torch.tensor(stats, dtype=torch.float64)
    group._collective("gathering read statistics", lambda: dist.all_reduce(t))
    return t.view(group.world_size, k).cpu().tolist()


def load_share(group: Group, features: ShardFeatures, sampler, split: dict[str, np.ndarray], seed: int) -> None:
    """Read the rows of this rank's share of ``split`` for ``seed``; rank 0 logs what every rank holds."""
    from pipeline.core.progress import log

    t0 = time.perf_counter()
    mine = group.shares(split, seed)
    features.load(rows_needed(sampler, np.concatenate(list(mine.values()))))
    targets = sum(len(v) for v in mine.values())
    n = features.reader.num_nodes
    for r, (t, rows, nbytes, secs) in enumerate(gather_stats(group, [targets, *features.stats(), time.perf_counter() - t0])):
        log(f"seed {seed}, rank {r}: {int(t)} targets; holds {int(rows)} of {n} cache rows ({rows / n:.0%}, {nbytes / 1e6:.1f} MB); {secs:.1f}s")


def run_rank(group: Group | None, fn):
    """``fn()``; on a rank of a job, its errors name the rank (and unexpected ones keep their traceback)."""
    if group is None:
        return fn()
    try:
        return fn()
    except PipelineError as err:
        msg = err.format_message()
        if msg.startswith(group.name):
            raise
        raise type(err)(f"{group.name}: {msg}") from err
    except Exception as err:
        import traceback

        traceback.print_exc()
        raise PipelineError(f"{group.name} failed: {type(err).__name__}: {err}") from err


class NoWriter:
    """What ranks other than 0 write: nothing (same methods as ``CheckpointWriter``)."""

    def __enter__(self) -> "NoWriter":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None
