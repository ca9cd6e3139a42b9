"""Real layer stepping with early exit equals the full forward followed by the same policy.

MiniLM (6 layers, H = 384) on a few Cora ego subgraphs, every node's text run through the
LLM (no cache), and a seeded untrained G-Ladder: climbing rung by rung and dropping exited
targets must give the same exits and answers as running all rungs for all nodes, while
running fewer LLM layers.
"""

from __future__ import annotations

import pytest
import torch

from pipeline.core.graph import load_graph
from stage1_encode.models import load_model, resolve_model
from stage1_encode.stepping import LayerStepper
from stage2_train.ladder import GLadder
from stage2_train.sampling import Sampler
from stage3_infer.early_exit import BatchSources, climb, restrict
from stage3_infer.llm_runner import TextRunner
from stage2_train.exit_policies import ExitTracker, decide, parse_exit

MAX_LENGTH = 48
LAYERS = [0, 2, 4, 6]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    graph = load_graph("cora")
    stepper = LayerStepper(load_model(resolve_model("minilm-l6")))
    targets = torch.tensor([3, 17, 640, 2001])
    sub = Sampler(graph.edge_index, graph.num_nodes, mode="ego").sample(targets)
    ladder = GLadder(stepper.hidden_size, 16, graph.num_classes, len(LAYERS), dropout=0.0).eval()
    texts = [graph.texts[u] for u in sub.nodes.tolist()]
    full = stepper.encode_batch(texts, LAYERS, "mean", MAX_LENGTH).half().float()  # (n, S, H)
    with torch.no_grad():
        ref_logits = ladder(full, sub)  # (S, B, C)
    return graph, stepper, sub, ladder, ref_logits


def test_restrict_keeps_whole_subgraphs(setup):
    _, _, sub, _, _ = setup
    part, local = restrict(sub, torch.tensor([1, 3]))
    assert torch.equal(part.nodes, sub.nodes[local])
    assert set(part.batch.tolist()) == {0, 1} and part.target_graph.tolist() == [0, 1]
    assert part.nodes[part.targets].tolist() == sub.nodes[sub.targets[[1, 3]]].tolist()
    # the kept subgraphs' edges, in global ids, are exactly the original ones
    keep = torch.isin(sub.batch, torch.tensor([1, 3]))
    orig = {tuple(e) for e in sub.nodes[sub.edge_index[:, keep[sub.edge_index[0]]]].T.tolist()}
    assert {tuple(e) for e in part.nodes[part.edge_index].T.tolist()} == orig


@pytest.mark.parametrize("spec", ["none", "patience:1", "confidence:0.2"])
def test_climb_matches_full_forward(setup, spec):
    graph, stepper, sub, ladder, ref_logits = setup
    policy = parse_exit(spec)
    want = decide(policy, ref_logits)
    uniq, slot = torch.unique(sub.nodes, return_inverse=True)
    runner = TextRunner(stepper, [graph.texts[u] for u in uniq.tolist()], 8 * MAX_LENGTH, MAX_LENGTH, "mean", max_texts=4)
    tracker = ExitTracker(policy, len(sub.targets), len(LAYERS))
    climb(ladder, sub, BatchSources(slot, None), runner, LAYERS, tracker, torch.arange(len(sub.targets)),
          round_states=lambda h: h.half().float())
    assert tracker.exit_rung.tolist() == want.exit_rung.tolist()
    assert tracker.pred.tolist() == want.pred.tolist()
    assert torch.allclose(tracker.confidence, want.confidence, atol=1e-3)
    # a text stops at the deepest exit among the subgraphs it belongs to
    deepest = torch.zeros(len(uniq), dtype=torch.long)
    exit_layer = torch.tensor(LAYERS)[tracker.exit_rung][sub.batch]  # (n,) per local node
    deepest.scatter_reduce_(0, slot, exit_layer, reduce="amax")
    assert runner.layer_evals == int(deepest.sum())
    if spec == "none":
        assert runner.layer_evals == len(uniq) * LAYERS[-1]


def test_runner_batches_under_the_token_budget(setup):
    graph, stepper, *_ = setup
    texts = graph.texts[:20]
    for budget, cap in ((3 * MAX_LENGTH, None), (4096, 2)):
        runner = TextRunner(stepper, texts, budget, MAX_LENGTH, "mean", max_texts=cap)
        shapes = [tuple(state.attention_mask.shape) for _, state in runner._groups]  # (B, T) of each batch
        assert all(b * t <= budget or b == 1 for b, t in shapes) and all(cap is None or b <= cap for b, _ in shapes)
        assert sorted(torch.cat([slots for slots, _ in runner._groups]).tolist()) == list(range(20))
    assert len(TextRunner(stepper, texts, 4096, MAX_LENGTH, "mean")._groups) == 1  # 20 short texts fit one batch
