"""G-Ladder shapes and gates, the baselines' signature, and the subgraph samplers on real Cora edges."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stage2_train.baselines import NodeBaseline
from stage2_train.ladder import GLadder
from stage2_train.sampling import Sampler, generator


@pytest.mark.parametrize("hops, fanout", [(1, None), (2, None), (1, 0), (2, 0)])  # fanout 0: no cap, as None
def test_ego_sampler_matches_pyg_k_hop_subgraph(cora, hops, fanout):
    from torch_geometric.utils import k_hop_subgraph

    ei = torch.as_tensor(cora.edge_index)
    targets = np.array([0, 5, 1358, 2707])  # includes a hub and a leaf
    sub = Sampler(cora.edge_index, cora.num_nodes, mode="ego", hops=hops, fanout=fanout).sample(targets)
    assert sub.nodes[sub.targets].tolist() == targets.tolist()
    for b, t in enumerate(targets):
        subset, sub_ei, _, _ = k_hop_subgraph(int(t), hops, ei, relabel_nodes=False, num_nodes=cora.num_nodes)
        mine = sub.nodes[sub.batch == b]
        assert sorted(mine.tolist()) == sorted(subset.tolist())
        local = sub.edge_index[:, sub.batch[sub.edge_index[0]] == b]
        got = {(int(sub.nodes[u]), int(sub.nodes[v])) for u, v in local.t().tolist()}
        assert got == {(int(u), int(v)) for u, v in sub_ei.t().tolist()}


def test_default_sampler_is_a_capped_two_hop_ego_graph(cora, tmp_path):
    """The training default, --hops 2 --fanout 5: inside the 2-hop neighbourhood, at most 1 + 5 + 25 nodes."""
    from torch_geometric.utils import k_hop_subgraph

    from stage2_train.config import TrainConfig

    cfg = TrainConfig(cache=tmp_path, out=tmp_path / "r")
    assert (cfg.resolved_sampler, cfg.hops, cfg.fanout) == ("ego", 2, 5)
    targets = np.arange(0, 2708, 13)
    sub = Sampler(cora.edge_index, cora.num_nodes, mode="ego", hops=cfg.hops, fanout=cfg.fanout).sample(targets)
    sizes = torch.bincount(sub.batch)
    hub = int(np.argmax(np.bincount(np.asarray(cora.edge_index[0]))))  # 168 neighbours
    assert int(sizes.max()) <= 31 and int(sizes.max()) > 6  # 2 hops reach past the target's own 5
    for b, t in enumerate(targets):
        subset, _, _, _ = k_hop_subgraph(int(t), 2, torch.as_tensor(cora.edge_index), num_nodes=cora.num_nodes)
        assert set(sub.nodes[sub.batch == b].tolist()) <= set(subset.tolist())
    assert len(Sampler(cora.edge_index, cora.num_nodes, mode="ego", hops=2, fanout=5).sample(np.array([hub])).nodes) <= 31


def test_edges_induced_in_chunks_equal_one_pass(cora, monkeypatch):
    """Candidate edges are examined CANDIDATE_CHUNK at a time (bounded memory); any chunk size gives the same subgraphs."""
    import stage2_train.sampling as sampling

    targets = np.arange(0, 2708, 5)
    for hops, fanout in ((1, 0), (2, 5), (2, 0)):
        s = Sampler(cora.edge_index, cora.num_nodes, mode="ego", hops=hops, fanout=fanout)
        whole = s.sample(targets)
        assert int(s.deg[whole.nodes].sum()) > 1000  # several chunks below
        for chunk in (1, 7, 1000):
            monkeypatch.setattr(sampling, "CANDIDATE_CHUNK", chunk)
            cut = s.sample(targets)
            assert all(torch.equal(getattr(cut, f), getattr(whole, f)) for f in ("nodes", "edge_index", "batch", "targets"))
        monkeypatch.undo()


def test_fanout_and_rwr_are_seeded_and_deterministic_for_eval(cora):
    targets = np.arange(0, 2708, 97)
    for mode, kw in (("ego", {"fanout": 2}), ("rwr", {"num_walks": 4, "walk_length": 4})):
        s = Sampler(cora.edge_index, cora.num_nodes, mode=mode, **kw)
        a, b = s.sample(targets), s.sample(targets)  # evaluation draws: identical
        assert torch.equal(a.nodes, b.nodes) and torch.equal(a.edge_index, b.edge_index)
        c, d = s.sample(targets, generator(3)), s.sample(targets, generator(3))
        assert torch.equal(c.nodes, d.nodes) and torch.equal(c.edge_index, d.edge_index)
        assert torch.equal(c.nodes[c.targets], torch.as_tensor(targets))
        if mode == "ego":
            assert int(torch.bincount(a.batch).max()) <= 3  # target + at most 2 neighbours
        # every edge stays inside one subgraph
        assert torch.equal(a.batch[a.edge_index[0]], a.batch[a.edge_index[1]])


def test_full_sampler_shares_one_graph(cora):
    sub = Sampler(cora.edge_index, cora.num_nodes, mode="full").sample(np.array([3, 7]))
    assert sub.nodes.shape == (2708,) and sub.edge_index.shape == (2, 10556)
    assert sub.targets.tolist() == [3, 7] and sub.target_graph.tolist() == [0, 0]


def test_ladder_shapes_gates_and_incremental_rungs(cora):
    torch.manual_seed(0)
    S, H, K, C = 3, 16, 8, 7
    model = GLadder(H, K, C, S, gnn="sage", num_layers=2).eval()
    sub = Sampler(cora.edge_index, cora.num_nodes, mode="ego").sample(np.array([0, 1, 2, 3]))
    states = torch.randn(len(sub.nodes), S, H)  # (n, S, H)
    logits = model(states, sub)
    assert logits.shape == (S, 4, C)  # (S, B, C)
    assert torch.allclose(model.gates(), torch.full((S,), 0.5))  # a_i = 0 -> g_i = 0.5
    z = None
    for i in range(S):  # the incremental API gives the same logits as forward
        z, li = model.rung(i, states[:, i], z, sub)
        assert z.shape == (len(sub.nodes), K)
        assert torch.allclose(li, logits[i])
    # the final rung's last GNN layer has no activation: some outputs are negative
    assert (z < 0).any()
    with torch.no_grad():
        model.gate_logits.fill_(1.0)  # T = 0.1: sigmoid(10) ~ 1 -> rung i reads only P_i(h_i)
    assert torch.allclose(model.gates(), torch.full((S,), torch.sigmoid(torch.tensor(10.0)).item()))
    with torch.no_grad():
        model.gate_logits.fill_(-5.0)  # g ~ 0: rung 1 ignores h_1 entirely
        out_a = model(states, sub)
        states_b = states.clone()
        states_b[:, 1] += 100.0
        out_b = model(states_b, sub)
    assert torch.allclose(out_a[1], out_b[1], atol=1e-4)
    assert torch.equal(out_a[0], out_b[0])  # rung 0 reads h_0 only


@pytest.mark.parametrize("gnn", ["gcn", "gat"])
def test_ladder_other_gnns(cora, gnn):
    model = GLadder(16, 8, 7, 2, gnn=gnn)
    sub = Sampler(cora.edge_index, cora.num_nodes, mode="rwr").sample(np.array([0, 9]))
    assert model(torch.randn(len(sub.nodes), 2, 16), sub).shape == (2, 2, 7)


@pytest.mark.parametrize("arch", ["mlp", "gcn", "sage"])
def test_baselines_share_the_signature(cora, arch):
    model = NodeBaseline(arch, 16, 8, 7, num_layers=2)
    sub = Sampler(cora.edge_index, cora.num_nodes, mode="full").sample(np.array([0, 9, 11]))
    assert model(torch.randn(cora.num_nodes, 1, 16), sub).shape == (1, 3, 7)


def test_ego_readout_reads_the_nodes_own_state(cora):
    torch.manual_seed(0)
    S, H, K, C = 2, 16, 8, 7
    model = GLadder(H, K, C, S, readout="ego").eval()
    sub = Sampler(cora.edge_index, cora.num_nodes, mode="ego").sample(np.array([0, 1, 2]))
    states = torch.randn(len(sub.nodes), S, H)
    assert model(states, sub).shape == (S, 3, C) and model.heads[0].in_features == 3 * K
    with torch.no_grad():  # keep only the head's own-state part: neighbours can no longer move the answer
        for head in model.heads:
            head.weight[:, K:] = 0.0
        others = torch.ones(len(sub.nodes), dtype=torch.bool)
        others[sub.targets] = False
        moved = states.clone()
        moved[others] += 50.0
        a, b = model(states, sub), model(moved, sub)
    assert torch.allclose(a, b, atol=1e-5)
    own = model.proj[1](states[sub.targets, 1])  # (B, K): the last rung's own projected state
    assert torch.allclose(a[1], own @ model.heads[1].weight[:, :K].T + model.heads[1].bias, atol=1e-5)
    with pytest.raises(ValueError, match="unknown readout 'max'"):
        GLadder(H, K, C, S, readout="max")


def test_elu_without_norm_is_the_authors_rung(cora):
    """--rung-activation elu --rung-norm none, as the ENGINE authors ran Cora: P_i keeps
    Linear -> LayerNorm -> ReLU -> Linear (their projection), each hidden convolution is
    followed by ELU alone; checked against a hand computation."""
    from torch.nn import functional as F

    torch.manual_seed(0)
    S, H, K, C = 2, 16, 8, 7
    model = GLadder(H, K, C, S, num_layers=2, activation="elu", norm="none", dropout=0.0).eval()
    assert [type(m).__name__ for m in model.proj[0]] == ["Linear", "LayerNorm", "ReLU", "Linear"]
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in model.gnns.modules())
    sub = Sampler(cora.edge_index, cora.num_nodes, mode="ego").sample(np.array([0, 1, 2]))
    h0 = torch.randn(len(sub.nodes), H)
    p = model.proj[0]
    own = p[3](F.relu(p[1](p[0](h0))))  # (n, K)
    conv = model.gnns[0].convs
    z = F.elu(conv[1](F.elu(conv[0](own, sub.edge_index)), sub.edge_index))  # rung 0 is not the last: both layers activated
    with torch.no_grad():
        got, _ = model.rung(0, h0, None, sub)
    assert torch.allclose(got, z, atol=1e-6)
    assert (got > -1).all() and (got < 0).any()  # ELU: negative values, bounded below by -1


def test_projection_keeps_layernorm_and_relu_whatever_the_rungs_use():
    from stage2_train.checkpoint import build_model

    spec = {"arch": "ladder", "in_channels": 16, "hidden_channels": 8, "out_channels": 3, "num_rungs": 2, "gnn": "sage",
            "num_layers": 1, "dropout": 0.5, "temperature": 0.1, "rung_activation": "elu", "rung_norm": "none",
            "standardize": False, "readout": "target-mean", "rung_grad": "own"}
    model = build_model(spec)
    assert [type(m).__name__ for m in model.proj[0]] == ["Linear", "LayerNorm", "ReLU", "Linear"]


def test_unknown_rung_activation_or_norm_is_refused():
    S, H, K, C = 2, 16, 8, 7
    with pytest.raises(ValueError, match="unknown activation 'tanh'"):
        GLadder(H, K, C, S, activation="tanh")
    with pytest.raises(ValueError, match="unknown norm 'batch'"):
        GLadder(H, K, C, S, norm="batch")
