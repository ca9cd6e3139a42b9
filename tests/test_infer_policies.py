"""Exit-policy semantics on constructed per-rung predictions (no model involved)."""

from __future__ import annotations

import pytest
import torch

from pipeline.core.errors import InputError
from stage2_train.exit_policies import ExitPolicy, ExitTracker, decide, parse_exit

C = 3


def logits_from(preds: list[list[int]], margin: float = 5.0) -> torch.Tensor:
    """Per-rung class choices (S lists of M classes) -> logits (S, M, C) with a clear argmax."""
    s, m = len(preds), len(preds[0])
    out = torch.zeros(s, m, C)
    for r in range(s):
        for j in range(m):
            out[r, j, preds[r][j]] = margin
    return out


# rungs x targets; target 0 agrees at rungs 0-1 then flips; target 1 never agrees twice;
# target 2 agrees only at rungs 2-3-4; target 3 constant.
PREDS = [
    [0, 0, 1, 2],
    [0, 1, 2, 2],
    [1, 0, 0, 2],
    [2, 1, 0, 2],
    [2, 0, 0, 2],
]


def test_patience_1_exits_at_first_agreement_and_keeps_its_answer():
    t = decide(parse_exit("patience:1"), logits_from(PREDS))
    # target 0 exited at rung 1 with class 0; its later rungs say 1, 2, 2 and must not matter
    assert t.exit_rung.tolist() == [1, 4, 3, 1]
    assert t.pred.tolist() == [0, 0, 0, 2]
    assert t.exited.all()


def test_patience_2_needs_three_rungs_in_a_row():
    t = decide(parse_exit("patience:2"), logits_from(PREDS))
    # target 0 never has three equal in a row -> last head (class 2); target 2 at rung 4
    assert t.exit_rung.tolist() == [4, 4, 4, 2]
    assert t.pred.tolist() == [2, 0, 0, 2]


def test_exited_answer_never_overwritten_by_later_disagreeing_rungs():
    # the reference's `==`-for-`&` defect would report the last rung's class 1 for this node
    logits = logits_from([[2], [2], [1], [1], [1]])
    t = decide(parse_exit("patience:1"), logits)
    assert (t.exit_rung.item(), t.pred.item()) == (1, 2)
    tracker = ExitTracker(parse_exit("patience:1"), 1, 5)
    tracker.update(0, torch.tensor([0]), logits[0])
    tracker.update(1, torch.tensor([0]), logits[1])
    with pytest.raises(ValueError):
        tracker.update(2, torch.tensor([0]), logits[2])
    assert tracker.pred.tolist() == [2]


def test_confidence_threshold_and_last_head_fallback():
    # max softmax per rung for one target: low, low, high -> exits at rung 2
    logits = torch.tensor([[[0.0, 0.0, 0.0]], [[1.0, 0.0, 0.0]], [[0.0, 6.0, 0.0]], [[9.0, 0.0, 0.0]]])
    t = decide(parse_exit("confidence:0.9"), logits)
    assert (t.exit_rung.item(), t.pred.item()) == (2, 1)
    assert t.confidence.item() == pytest.approx(torch.softmax(torch.tensor([0.0, 6.0, 0.0]), 0)[1].item())
    t = decide(parse_exit("confidence:1.0"), logits)  # never reached -> last head
    assert (t.exit_rung.item(), t.pred.item()) == (3, 0)


def test_layer_and_none():
    logits = logits_from(PREDS)
    t = decide(parse_exit("layer:2"), logits)
    assert t.exit_rung.tolist() == [2, 2, 2, 2]
    assert t.pred.tolist() == PREDS[2]
    t = decide(parse_exit("none"), logits)
    assert t.exit_rung.tolist() == [4, 4, 4, 4]
    assert t.pred.tolist() == PREDS[4]


def test_incremental_updates_match_decide():
    logits = torch.randn(6, 50, C, generator=torch.Generator().manual_seed(0))
    for spec in ("patience:1", "patience:2", "confidence:0.6", "layer:3", "none"):
        policy = parse_exit(spec)
        want = decide(policy, logits)
        tracker = ExitTracker(policy, 50, 6)
        for rung in range(6):
            rows = torch.nonzero(tracker.active).flatten()
            left = tracker.update(rung, rows, logits[rung, rows])
            assert left.shape == rows.shape
        assert torch.equal(tracker.pred, want.pred) and torch.equal(tracker.exit_rung, want.exit_rung)


def test_parse_exit_specs():
    assert parse_exit("patience:1") == ExitPolicy("patience", 1)
    assert parse_exit("Confidence:0.95") == ExitPolicy("confidence", 0.95)
    assert parse_exit("layer:0", num_rungs=7) == ExitPolicy("layer", 0)
    assert parse_exit("none") == ExitPolicy("none")
    assert str(parse_exit("confidence:0.9")) == "confidence:0.9"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("fast", "--exit 'fast': unknown exit policy; use patience:P (P >= 1), confidence:T (0 < T <= 1), layer:I (0 <= I < rungs) or none"),
        ("patience", "--exit 'patience': unknown exit policy; use patience:P (P >= 1), confidence:T (0 < T <= 1), layer:I (0 <= I < rungs) or none"),
        ("patience:x", "--exit 'patience:x': 'x' is not a whole number; use patience:P (P >= 1), confidence:T (0 < T <= 1), layer:I (0 <= I < rungs) or none"),
        ("layer:1.5", "--exit 'layer:1.5': '1.5' is not a whole number; use patience:P (P >= 1), confidence:T (0 < T <= 1), layer:I (0 <= I < rungs) or none"),
        ("confidence:x", "--exit 'confidence:x': 'x' is not a number; use patience:P (P >= 1), confidence:T (0 < T <= 1), layer:I (0 <= I < rungs) or none"),
        ("patience:0", "--exit 'patience:0': patience must be >= 1"),
        ("confidence:1.5", "--exit 'confidence:1.5': confidence threshold must be in (0, 1]"),
        ("layer:-1", "--exit 'layer:-1': rung index must be >= 0"),
        ("layer:7", "--exit layer:7: the checkpoint has 7 rungs (0..6); choose layer:I with I < 7"),
    ],
)
def test_parse_exit_refusals(spec, message):
    with pytest.raises(InputError) as err:
        parse_exit(spec, num_rungs=7)
    assert err.value.message == message


def test_choose_policy_takes_the_cheapest_within_one_percent_of_full_depth():
    from stage2_train.exit_policies import choose_policy, replay_counts

    layers = [0, 10, 20, 30, 40]
    labels = torch.tensor([2, 0, 0, 2])  # full depth (last rung) is right on all 4
    counts = replay_counts(logits_from(PREDS), labels, layers, specs=("none", "patience:1", "patience:2"))
    # patience:1 answers [0, 0, 0, 2]: 3/4 right, exits at rungs [1, 4, 3, 1] -> layers [10, 40, 30, 10]
    assert counts["patience:1"] == [3.0, 4.0, 90.0] and counts["none"] == [4.0, 4.0, 160.0]
    # patience:2 answers [2, 0, 0, 2]: 4/4, layers [40, 40, 40, 20]
    assert counts["patience:2"] == [4.0, 4.0, 140.0]
    choice = choose_policy(counts, last_layer=40)
    assert choice["policy"] == "patience:2" and choice["val_acc"] == 1.0 and choice["layer_fraction"] == 140 / 160
    # a 25% drop allowed: the cheaper patience:1
    assert choose_policy(counts, 40, max_rel_drop=0.25)["policy"] == "patience:1"
    # nothing within the limit but full depth: none
    assert choose_policy({"none": counts["none"], "patience:1": counts["patience:1"]}, 40)["policy"] == "none"
