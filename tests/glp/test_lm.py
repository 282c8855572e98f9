import pytest
import torch

from glp.data.lm import SourceModelError, capture_residual, load_source_lm, run_until_captured


# The last block is excluded: HF applies the final LayerNorm to hidden_states[-1], while we read the raw
# residual stream (the block's own output) at every layer.
@pytest.mark.parametrize("layer", [0, 1])
def test_hook_captures_the_output_of_the_requested_block(tiny_lm, layer):
    ids = tiny_lm.tokenizer("The cat sat on the mat.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = tiny_lm.model(ids, output_hidden_states=True).hidden_states[layer + 1]
        with capture_residual(tiny_lm, layer) as box:
            tiny_lm.model(ids)
    torch.testing.assert_close(box["acts"], ref)


def test_early_stop_capture_equals_full_forward(tiny_lm):
    ids = tiny_lm.tokenizer("Rain fell on the quiet town.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = tiny_lm.model(ids, output_hidden_states=True).hidden_states[2]
        with capture_residual(tiny_lm, 1, stop=True) as box:
            acts = run_until_captured(tiny_lm, box, input_ids=ids)
    torch.testing.assert_close(acts, ref)


def test_hook_is_removed_after_the_context(tiny_lm):
    block = tiny_lm.block(0)
    before = len(block._forward_hooks)  # transformers may keep hooks of its own
    with capture_residual(tiny_lm, 0):
        assert len(block._forward_hooks) == before + 1
    assert len(block._forward_hooks) == before


def test_wrong_layer_names_the_valid_range(tiny_lm):
    with pytest.raises(SourceModelError, match=r"layer 7 out of range .*3 blocks.*choose 0\.\.2"):
        tiny_lm.block(7)


def test_missing_model_says_what_to_do(tmp_path):
    with pytest.raises(SourceModelError, match="missing config.json.*save_pretrained"):
        load_source_lm(tmp_path / "nope")


def test_a_truncated_model_safetensors_gives_one_line_naming_file_and_fix(tmp_path, tiny_lm):
    import pytest

    from glp.data.lm import SourceModelError, load_source_lm

    path = tmp_path / "source_model" / "abc"
    tiny_lm.model.save_pretrained(path)
    tiny_lm.tokenizer.save_pretrained(path)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(SourceModelError) as e:
        load_source_lm(path, "cpu", "float32")
    msg = str(e.value)
    assert "\n" not in msg and "model.safetensors is truncated or corrupt" in msg
    assert f"delete {path} and re-materialize `source_model`" in msg
