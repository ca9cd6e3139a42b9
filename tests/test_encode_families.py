"""Every supported family steps exactly as its own forward; every other one is refused by name.

Tiny random-weight models (2 layers, H = 64) built from ``transformers`` config classes, no
download. Each gets non-default values for the config fields that change its forward
(embedding and residual multipliers, embedding scaling, attention soft-capping, sliding
windows, layers without RoPE, local/global rotary, relative-position bias, ALiBi, partial
rotary, post-norm): every state, both poolings, and the infer path (``select`` mid-way) are
compared with ``output_hidden_states``. The list of families is stage1_encode/families.py,
the one the README quotes (checked here).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import transformers as tf

from pipeline.core.errors import InputError
from stage1_encode.families import BY_MODEL_TYPE, supported_text
from stage1_encode.models import LoadedModel, ModelSpec
from stage1_encode.self_check import deviation, reference_states
from stage1_encode.stepping import LayerStepper, TokenBatch, pool_states

VOCAB, HIDDEN, LAYERS, T = 128, 64, 2, 12


def decoder(cls, **fields):
    base = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)
    return cls(**{**base, **fields})


def encoder(cls, **fields):
    base = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS,
                num_attention_heads=4, max_position_embeddings=70, pad_token_id=1)
    return cls(**{**base, **fields})


SLIDING = ["sliding_attention", "full_attention"]  # a local layer then a global one
# model_type -> tiny config whose forward-changing fields are not at their defaults
CONFIGS = {
    "llama": lambda: decoder(tf.LlamaConfig, attention_bias=True, mlp_bias=True),
    "mistral": lambda: decoder(tf.MistralConfig, sliding_window=4),
    "mixtral": lambda: decoder(tf.MixtralConfig, sliding_window=4, num_local_experts=4, num_experts_per_tok=2),
    "qwen2": lambda: decoder(tf.Qwen2Config, use_sliding_window=True, sliding_window=4, max_window_layers=1),
    "qwen3": lambda: decoder(tf.Qwen3Config, use_sliding_window=True, sliding_window=4, max_window_layers=1, head_dim=16),
    "qwen3_moe": lambda: decoder(tf.Qwen3MoeConfig, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, head_dim=16),
    "gemma": lambda: decoder(tf.GemmaConfig, head_dim=16),  # embeddings scaled by sqrt(H)
    "gemma2": lambda: decoder(tf.Gemma2Config, head_dim=16, sliding_window=4, attn_logit_softcapping=2.0, query_pre_attn_scalar=8),
    "gemma3_text": lambda: decoder(tf.Gemma3TextConfig, head_dim=16, sliding_window=4, layer_types=SLIDING, attn_logit_softcapping=2.0,
                                   query_pre_attn_scalar=8),  # local/global rotary (its rotary takes the layer type)
    "phi3": lambda: decoder(tf.Phi3Config, sliding_window=4, partial_rotary_factor=0.5),
    "phi": lambda: decoder(tf.PhiConfig, partial_rotary_factor=0.5, qk_layernorm=True),
    "granite": lambda: decoder(tf.GraniteConfig, embedding_multiplier=3.0, residual_multiplier=0.5, attention_multiplier=0.1),
    "granitemoe": lambda: decoder(tf.GraniteMoeConfig, embedding_multiplier=3.0, residual_multiplier=0.5, attention_multiplier=0.1,
                                  num_local_experts=4, num_experts_per_tok=2),
    "smollm3": lambda: decoder(tf.SmolLM3Config, no_rope_layers=[1, 0]),  # layer 1 without RoPE
    "olmo2": lambda: decoder(tf.Olmo2Config),
    "cohere2": lambda: decoder(tf.Cohere2Config, sliding_window=4, layer_types=SLIDING),
    "starcoder2": lambda: decoder(tf.Starcoder2Config, sliding_window=4),
    "stablelm": lambda: decoder(tf.StableLmConfig, partial_rotary_factor=0.25, use_qkv_bias=True),
    "gpt2": lambda: tf.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=4, n_positions=64, scale_attn_by_inverse_layer_idx=True),
    "gptj": lambda: tf.GPTJConfig(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=4, rotary_dim=8, n_positions=64),
    "gpt_neox": lambda: tf.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS,
                                         num_attention_heads=4, rotary_pct=0.5, use_parallel_residual=False, max_position_embeddings=64),
    "opt": lambda: tf.OPTConfig(vocab_size=VOCAB, hidden_size=HIDDEN, ffn_dim=2 * HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4,
                                max_position_embeddings=64, do_layer_norm_before=False),  # post-norm, as OPT-350m
    "falcon": lambda: tf.FalconConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4, alibi=True),
    "bloom": lambda: tf.BloomConfig(vocab_size=VOCAB, hidden_size=HIDDEN, n_layer=LAYERS, n_head=4),  # ALiBi
    "bert": lambda: encoder(tf.BertConfig, pad_token_id=0),
    "roberta": lambda: encoder(tf.RobertaConfig),  # positions offset past the padding index
    "xlm-roberta": lambda: encoder(tf.XLMRobertaConfig),
    "electra": lambda: encoder(tf.ElectraConfig, embedding_size=32, pad_token_id=0),  # embeddings projected to H
    "distilbert": lambda: tf.DistilBertConfig(vocab_size=VOCAB, dim=HIDDEN, hidden_dim=2 * HIDDEN, n_layers=LAYERS, n_heads=4,
                                              max_position_embeddings=64, sinusoidal_pos_embds=True),
    "mpnet": lambda: encoder(tf.MPNetConfig),  # relative-position bias computed once, passed to every layer
    "deberta-v2": lambda: encoder(tf.DebertaV2Config, relative_attention=True, position_buckets=8, pos_att_type=["c2p", "p2c"],
                                  max_relative_positions=16, pad_token_id=0),
    "modernbert": lambda: tf.ModernBertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS,
                                              num_attention_heads=4, local_attention=4, global_attn_every_n_layers=2,
                                              max_position_embeddings=64, pad_token_id=0),  # local/global rotary
}
# refused by name: encoder-decoders, shared layers, state-space models, multimodal wrappers, ...
UNSUPPORTED = {
    "t5": lambda: tf.T5Config(vocab_size=VOCAB, d_model=HIDDEN, d_ff=2 * HIDDEN, num_layers=LAYERS, num_heads=4, d_kv=16),
    "bart": lambda: tf.BartConfig(vocab_size=VOCAB, d_model=HIDDEN, encoder_layers=LAYERS, decoder_layers=LAYERS),
    "albert": lambda: tf.AlbertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4),
    "xlnet": lambda: tf.XLNetConfig(vocab_size=VOCAB, d_model=HIDDEN, n_layer=LAYERS, n_head=4),
    "mamba": lambda: tf.MambaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS),
    "gemma3": lambda: tf.Gemma3Config(  # the multimodal wrapper (Gemma 3 4B and up); its text model is gemma3_text
        text_config={"hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "vocab_size": VOCAB},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 28, "patch_size": 14},
        mm_tokens_per_image=4,
    ),
}


def loaded(model_type: str, dtype=torch.float32) -> LoadedModel:
    torch.manual_seed(0)
    model = tf.AutoModel.from_config(CONFIGS[model_type]()).to(dtype).eval().requires_grad_(False)
    return LoadedModel(ModelSpec(f"tiny-{model_type}", "", "folder"), model, None, torch.device("cpu"), dtype)


def token_batch(config) -> TokenBatch:
    """Three texts of 12, 7 and 3 tokens, right-padded: windows of 4 tokens matter, padding too."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (3, T), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = mask[2, 3:] = 0
    ids[mask == 0] = config.pad_token_id or 0
    types = torch.zeros_like(ids) if getattr(config, "type_vocab_size", 0) else None
    return TokenBatch(ids, mask, types)


def test_matrix_covers_exactly_the_supported_families() -> None:
    assert sorted(CONFIGS) == sorted(BY_MODEL_TYPE)
    assert not set(UNSUPPORTED) & set(BY_MODEL_TYPE)


def test_readme_lists_the_supported_families() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert f"Supported model families: {supported_text()}." in readme


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_family_steps_exactly_as_its_forward(model_type: str) -> None:
    stepper = LayerStepper(loaded(model_type))
    assert stepper.num_states == LAYERS + 1 and stepper.family == BY_MODEL_TYPE[model_type].kind
    batch = token_batch(stepper.config)
    every = list(range(stepper.num_states))
    for pooling in ("mean", "last"):
        ours = stepper.encode_tokens(batch, every, pooling)  # (B, S, H): state 0 .. L in one pass
        ref = reference_states(stepper, batch, every, pooling)
        assert ours.shape == ref.shape == (3, stepper.num_states, HIDDEN)
        assert deviation(ours, ref).tolist() == [0.0] * stepper.num_states, (model_type, pooling)
    # infer's path: one layer, drop a text (the batch shrinks and loses padding), on to the end
    state = stepper.advance(stepper.start(batch), 1)
    state = stepper.select(state, [2, 0])
    stepper.advance(state, stepper.num_states - 1)
    ref = reference_states(stepper, batch, [stepper.num_states - 1], "mean")[[2, 0], 0]
    assert float(deviation(stepper.pool(state).unsqueeze(1), ref.unsqueeze(1))[0]) <= 1e-5, model_type


@pytest.mark.parametrize("model_type", sorted(UNSUPPORTED))
def test_unsupported_family_is_refused_by_name(model_type: str) -> None:
    model = tf.AutoModel.from_config(UNSUPPORTED[model_type]())
    with pytest.raises(InputError) as err:
        LayerStepper(LoadedModel(ModelSpec("tiny", "", "folder"), model, None, torch.device("cpu"), torch.float32))
    assert err.value.message == (
        f"--model tiny: architecture {type(model).__name__} (model_type '{model_type}') is not a supported family; "
        f"layer-by-layer stepping is checked for: {supported_text()}"
    )


@pytest.mark.parametrize("model_type", sorted(UNSUPPORTED))
def test_encode_refuses_an_unsupported_family_before_anything(model_type: str, cli, cora_graph, tmp_path) -> None:
    folder = tmp_path / model_type
    UNSUPPORTED[model_type]().save_pretrained(folder)  # config.json is all the refusal reads
    out = tmp_path / "cache"
    result = cli("encode", cora_graph(20), "--out", out, "--model", folder, "--max-length", "16")
    assert result.exit_code == 2, result.output
    assert f"(model_type '{model_type}') is not a supported family" in result.output
    assert supported_text().split(", ")[-1] in " ".join(result.output.split())  # the list, to its last family
    assert not out.exists() and "Traceback" not in result.output


def test_a_last_state_of_another_width_is_refused() -> None:
    """OPT-350m projects its last state to another width: a cache holds one width."""
    config = tf.OPTConfig(vocab_size=VOCAB, hidden_size=HIDDEN, ffn_dim=2 * HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4,
                          max_position_embeddings=64, word_embed_proj_dim=32)
    model = tf.AutoModel.from_config(config).eval()
    with pytest.raises(InputError, match=r"^--model tiny-opt: OPTModel \(model_type opt\) returns a last state 32 wide, its other states 64; "
                                         r"it cannot be stepped layer by layer$"):
        LayerStepper(LoadedModel(ModelSpec("tiny-opt", "", "folder"), model, None, torch.device("cpu"), torch.float32))


def test_model_config_reads_every_family_naming(tmp_path) -> None:
    """config.json names its depth and width n_layer/n_embd (GPT-2), n_layers/dim (DistilBERT), ..."""
    from stage1_encode.models import model_config

    for model_type in ("gpt2", "gptj", "bloom", "distilbert", "falcon", "llama"):
        CONFIGS[model_type]().save_pretrained(tmp_path / model_type)
        cfg = model_config(ModelSpec(model_type, str(tmp_path / model_type), "folder"))
        assert (cfg["num_hidden_layers"], cfg["hidden_size"]) == (LAYERS, HIDDEN), model_type
    assert json.loads((tmp_path / "gpt2" / "config.json").read_text())["n_positions"] == 64
    assert model_config(ModelSpec("gpt2", str(tmp_path / "gpt2"), "folder"))["max_position_embeddings"] == 64


class SkipConnectionLlama(tf.LlamaModel):
    """A forward the stepping cannot see: every layer's input gets the embeddings added (as
    families with per-layer inputs do). Stands for a custom-code family under a known model_type."""

    def forward(self, input_ids=None, attention_mask=None, output_hidden_states=False, **kwargs):
        from transformers.masking_utils import create_causal_mask
        from transformers.modeling_outputs import BaseModelOutputWithPast

        x0 = hidden = self.embed_tokens(input_ids)
        positions = torch.arange(hidden.shape[1]).unsqueeze(0)
        mask = create_causal_mask(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask, cache=None, position_ids=positions)
        rope = self.rotary_emb(hidden, positions)
        states = [hidden]
        for i, layer in enumerate(self.layers):
            hidden = layer(hidden + (x0 if i else 0), attention_mask=mask, position_ids=positions, position_embeddings=rope)
            states.append(hidden)
        states[-1] = hidden = self.norm(hidden)
        return BaseModelOutputWithPast(last_hidden_state=hidden, hidden_states=tuple(states) if output_hidden_states else None)


def skip_connection_stepper() -> LayerStepper:
    torch.manual_seed(0)
    model = SkipConnectionLlama(CONFIGS["llama"]()).eval()
    tokenizer = SimpleNamespace(pad_token_id=0, model_input_names=["input_ids", "attention_mask"])
    return LayerStepper(LoadedModel(ModelSpec("tiny-skip", "", "folder"), model, tokenizer, torch.device("cpu"), torch.float32))


def test_self_check_refuses_a_forward_the_stepping_does_not_see(monkeypatch) -> None:
    from stage1_encode import self_check

    stepper = skip_connection_stepper()
    # token ids instead of texts: the tiny model has no tokenizer
    monkeypatch.setattr(self_check, "check_batch", lambda stepper, texts, max_length: token_batch(stepper.config))
    with pytest.raises(InputError) as err:
        self_check.check_stepper(stepper, ["a", "b", "c"], [0, 1, 2], "mean", 16)
    msg = err.value.message
    assert msg.startswith(
        "--model tiny-skip: SkipConnectionLlama (model_type llama) stepped layer by layer deviates from the model's own forward "
        "at LLM state 2 (mean pooling of 3 texts): relative error "
    )
    assert msg.endswith(", tolerance 1e-04 for float32 on --backend hf; its states would be wrong, so nothing was written. "
                        "This family's forward does something the stepping does not see; use another model.")
    dev = float(msg.split("relative error ")[1].split(",")[0])
    assert dev > 1e-2
    # state 1 (one layer, before any added embedding) still agrees: the check names the worst state
    ours = stepper.encode_tokens(token_batch(stepper.config), [0, 1], "mean")
    assert deviation(ours, reference_states(stepper, token_batch(stepper.config), [0, 1], "mean")).tolist() == [0.0, 0.0]


def test_pool_states_matches_the_reference_pooling() -> None:
    hidden = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert torch.equal(pool_states(hidden, mask, "last"), hidden[[0, 1], [1, 2]])
    assert torch.equal(pool_states(hidden, mask, "mean")[0], hidden[0, :2].mean(0))


# -- the self-check in `pipeline encode` -------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_granite(tmp_path_factory) -> Path:
    """A tiny random Granite folder (multipliers off their defaults) with SmolLM2's real tokenizer."""
    import shutil

    from stage1_encode.models import resolve_model

    smollm2 = Path(resolve_model("smollm2-135m").path)
    tokenizer = tf.AutoTokenizer.from_pretrained(smollm2)
    folder = tmp_path_factory.mktemp("granite") / "model"
    config = CONFIGS["granite"]()
    config.vocab_size, config.pad_token_id = len(tokenizer), tokenizer.pad_token_id
    torch.manual_seed(0)
    tf.GraniteModel(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (smollm2 / name).is_file():
            shutil.copy2(smollm2 / name, folder / name)
    return folder


def test_encode_records_its_self_check_and_equals_the_forward(tiny_granite, cli, cora_graph, tmp_path) -> None:
    from pipeline.core.graph import load_graph
    from stage1_encode.cache import open_cache
    from stage1_encode.models import load_model, resolve_model

    graph = cora_graph(20)
    out = tmp_path / "cache"
    result = cli("encode", graph, "--out", out, "--model", tiny_granite, "--max-length", "16", "--layers", "all", "--storage-dtype", "float32")
    assert result.exit_code == 0, result.output
    assert "self-check: 8 texts match the model's own forward to 0.0e+00 relative (tolerance 1e-04; " in result.output
    reader = open_cache(out)
    check = reader.manifest["self_check"]
    assert check["texts"] == 8 and check["backend"] == "hf" and check["compute_dtype"] == "float32"
    assert check["layers"] == [0, 1, 2] and check["max_rel_deviation"] == 0.0 and check["tolerance"] == 1e-4
    # the cache holds the model's own forward states (Granite's multipliers applied as its forward does)
    stepper = LayerStepper(load_model(resolve_model(str(tiny_granite))))
    batch = stepper.tokenize(list(load_graph(graph).texts[:4]), 16)
    ref = reference_states(stepper, batch, [0, 1, 2], "mean")  # (4, 3, H)
    assert float(deviation(torch.tensor(reader.read()[:4]), ref).max()) <= 1e-5


def test_encode_refuses_a_deviating_model_and_writes_nothing(tiny_granite, cli, cora_graph, tmp_path, monkeypatch) -> None:
    from stage1_encode import models

    real_load = models.load_model

    def load_with_skip_connection(spec, device="cpu", dtype=None):
        loaded = real_load(spec, device, dtype)
        config = tf.LlamaConfig(**{k: v for k, v in loaded.model.config.to_dict().items() if k in tf.LlamaConfig().to_dict()})
        model = SkipConnectionLlama(config).eval()
        model.load_state_dict(loaded.model.state_dict())  # Granite's weights, a forward the stepping does not see
        return models.LoadedModel(loaded.spec, model, loaded.tokenizer, loaded.device, loaded.dtype)

    monkeypatch.setattr(models, "load_model", load_with_skip_connection)
    out = tmp_path / "cache"
    result = cli("encode", cora_graph(20), "--out", out, "--model", tiny_granite, "--max-length", "16", "--layers", "all")
    assert result.exit_code == 2, result.output
    msg = " ".join(result.output.split())
    assert "SkipConnectionLlama (model_type granite) stepped layer by layer deviates from the model's own forward at LLM state 2" in msg
    assert "so nothing was written" in msg and "Traceback" not in result.output
    assert not out.exists() and not list(tmp_path.glob(".cache.tmp*"))
