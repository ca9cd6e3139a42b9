"""``--backend vllm`` gives the HF path's pooled states (real SmolLM2-135M, real Cora texts).

The vLLM tests need the second environment: ``bash scripts/setup_vllm.sh`` then
``.venv-vllm/bin/python -m pytest -m vllm tests/test_encode_vllm.py``. Where vLLM is not
installed (the main .venv) they skip, unless ``PIPELINE_REQUIRE_VLLM=1`` (set by the vLLM
test run, so a broken vLLM env fails loudly instead of skipping).
"""

from __future__ import annotations

import importlib.util
import os

import pytest

from pipeline.core.errors import InputError
from stage1_encode.models import resolve_model
from stage1_encode.vllm_backend import VllmEncoder, check_architecture

MAX_LENGTH = 96


def require_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        if os.environ.get("PIPELINE_REQUIRE_VLLM") == "1":
            pytest.fail("vLLM is not installed but PIPELINE_REQUIRE_VLLM=1: run bash scripts/setup_vllm.sh")
        pytest.skip("vLLM not installed (bash scripts/setup_vllm.sh creates .venv-vllm)")


@pytest.fixture(scope="module")
def smollm2():
    return resolve_model("smollm2-135m")


@pytest.fixture(scope="module")
def engines(smollm2):
    """(HF LayerStepper, VllmEncoder) on the same model folder, both fp32 on CPU."""
    require_vllm()
    import torch

    from stage1_encode.models import load_model
    from stage1_encode.stepping import LayerStepper

    torch.manual_seed(0)
    stepper = LayerStepper(load_model(smollm2))
    encoder = VllmEncoder(smollm2, max_length=MAX_LENGTH, dtype="float32", max_num_seqs=8, max_num_batched_tokens=1024)
    yield stepper, encoder
    encoder.close()


def rel_err(a, b) -> float:
    """Largest relative L2 error over the (B, S) vectors of two (B, S, H) tensors."""
    return float(((a - b).norm(dim=-1) / b.norm(dim=-1)).max())


@pytest.mark.vllm
@pytest.mark.parametrize(
    "pooling, layers",
    [("mean", list(range(31))), ("last", [0, 1, 7, 15, 29, 30]), ("mean", [3, 30])],
    ids=["mean-all-states", "last-six-states", "mean-two-states"],
)
def test_vllm_equals_hf(engines, cora_texts: list[str], pooling: str, layers: list[int]) -> None:
    stepper, encoder = engines
    assert encoder.num_states == stepper.num_states == 31 and encoder.hidden_size == 576
    hf = stepper.encode_batch(cora_texts, layers, pooling, max_length=MAX_LENGTH)  # (B, S, H)
    ours = encoder.encode_batch(cora_texts, layers, pooling, max_length=MAX_LENGTH)
    assert ours.shape == hf.shape == (len(cora_texts), len(layers), 576)
    assert rel_err(ours, hf) <= 1e-3
    # Per state, so a failure names the layer: the embedding output, a middle layer, the final norm.
    for s, k in enumerate(layers):
        assert rel_err(ours[:, s : s + 1], hf[:, s : s + 1]) <= 1e-3, (pooling, k)


@pytest.mark.vllm
def test_vllm_tokenizes_like_hf(engines, cora_texts: list[str]) -> None:
    stepper, encoder = engines
    batch = stepper.tokenize(cora_texts, MAX_LENGTH)
    ids = encoder.tokenize(cora_texts, MAX_LENGTH)
    assert [len(t) for t in ids] == batch.lengths.tolist()
    assert max(len(t) for t in ids) == MAX_LENGTH and min(len(t) for t in ids) <= 4  # truncation and a tiny text
    for row, t in zip(batch.input_ids.tolist(), ids):
        assert row[: len(t)] == t


@pytest.mark.vllm
def test_vllm_rejects_bad_arguments(engines, cora_texts: list[str]) -> None:
    _, encoder = engines
    with pytest.raises(ValueError, match=r"^unknown pooling 'max'; choose one of mean, last$"):
        encoder.encode_batch(cora_texts[:1], [30], "max")
    with pytest.raises(InputError, match=r"^--max-length 512: this vLLM engine was started with max_length 96$"):
        encoder.encode_batch(cora_texts[:1], [30], "mean", 512)
    with pytest.raises(InputError, match=r"^--layers \[31\]: valid states are 0\.\.30$"):
        encoder.encode_batch(cora_texts[:1], [31], "mean")


@pytest.mark.vllm
def test_checked_encoder_records_its_deviation_from_the_hf_forward(smollm2, cora_texts: list[str]) -> None:
    """`pipeline encode --backend vllm`'s self-check: the HF forward's states of the first texts
    (computed, then freed, before the engine starts) against the engine's."""
    require_vllm()
    from types import SimpleNamespace

    from stage1_encode.vllm_backend import checked_encoder

    config = SimpleNamespace(max_length=MAX_LENGTH, pooling="mean", batch_tokens=1024)
    engine, record = checked_encoder(smollm2, config, [0, 15, 30], cora_texts, "cpu", "float32")
    try:
        assert record["backend"] == "vllm" and record["compute_dtype"] == "float32" and record["tolerance"] == 1e-3
        assert record["texts"] == len(cora_texts) and record["layers"] == [0, 15, 30] and record["worst_state"] in (0, 15, 30)
        assert 0.0 <= record["max_rel_deviation"] <= 1e-3
    finally:
        engine.close()


def test_bert_is_refused_naming_backend_hf() -> None:
    """Checked before vLLM is imported, so this runs in the main environment too."""
    spec = resolve_model("minilm-l6")
    with pytest.raises(InputError) as err:
        check_architecture(spec)
    assert str(err.value) == (
        "--backend vllm: --model minilm-l6 is a BERT-family encoder (bert); the vLLM backend serves "
        "decoder LLMs only (llama, mistral, qwen2, qwen3). Use --backend hf for this model."
    )
    with pytest.raises(InputError, match="Use --backend hf"):
        VllmEncoder(spec)


@pytest.mark.parametrize("version, warned", [("0.32.0", False), ("0.32.0+cpu", False), ("0.33.0", True)])
def test_untested_vllm_version_warns(monkeypatch, capsys, version: str, warned: bool) -> None:
    """A stand-in ``vllm`` module: the version check needs no real vLLM."""
    import sys
    import types

    from stage1_encode.vllm_backend import import_vllm

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(__version__=version))
    monkeypatch.delenv("VLLM_ALLOW_INSECURE_SERIALIZATION", raising=False)
    assert import_vllm().__version__ == version
    assert os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] == "1"  # apply_model needs it in multiprocess mode
    from log_lines import untimed

    err = " ".join(" ".join(untimed(capsys.readouterr().err)).split())
    expected = (
        f"warning: --backend vllm: vLLM {version} is untested (tested: 0.32.0); the backend uses vLLM internals, "
        "so check it against --backend hf (tests/test_encode_vllm.py)"
    )
    assert (err == expected) if warned else (err == "")


def test_cli_refuses_vllm_for_bert_and_writes_nothing(tmp_path) -> None:
    """Through the real CLI (main env): exit 2, the message names --backend hf, no cache left."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    out = tmp_path / "cache.zarr"
    result = CliRunner().invoke(app, ["encode", "cora", "--model", "minilm-l6", "--backend", "vllm", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "Use --backend hf for this model." in result.output
    assert not out.exists()
