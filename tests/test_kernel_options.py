"""``experts_implementation`` / ``attn_implementation``: kernels transformers offers, chosen per embedder.

They compute the same function, so they are runtime options: vectors agree within 1e-4, fingerprints are the same,
and the saved config records the choice. A kernel the model does not offer is refused with the choices listed.
"""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoModel

from moee_plugins import MoEEmbedder
from moee_plugins.cli import main

TEXTS = ["The hockey team won the final.", "GPUs and printers", "moon", "a slightly longer sentence about the sea"]


def _embedder(model_dir, statistics, **options) -> MoEEmbedder:
    return MoEEmbedder(str(model_dir), mode="sum", device="cpu", statistics=statistics, **options)


@pytest.fixture(scope="module")
def default_vectors(tiny_model_dir, tiny_statistics, one_thread):
    emb = _embedder(tiny_model_dir, tiny_statistics)
    return emb.encode(TEXTS, batch_size=3), emb.encode_parts(TEXTS, batch_size=3), emb.fingerprint()


@pytest.mark.parametrize("options", [
    {"experts_implementation": "eager"}, {"experts_implementation": "batched_mm"},
    {"experts_implementation": "grouped_mm"}, {"attn_implementation": "eager"}, {"attn_implementation": "sdpa"},
], ids=lambda o: "-".join(o.values()))
def test_kernels_give_the_same_vectors(tiny_model_dir, tiny_statistics, default_vectors, options):
    vectors, parts, fingerprint = default_vectors
    emb = _embedder(tiny_model_dir, tiny_statistics, **options)
    name, value = next(iter(options.items()))
    if name == "experts_implementation":
        assert emb.model.get_experts_implementation()[""] == value  # the kernel really is the one asked for
    else:
        assert emb.model.config._attn_implementation == value
    assert emb.config[name] == value  # recorded in the saved config
    assert emb.fingerprint() == fingerprint  # not part of the vector identity
    mine = emb.encode_parts(TEXTS, batch_size=3)
    np.testing.assert_allclose(mine.hidden, parts.hidden, atol=1e-4)
    np.testing.assert_allclose(mine.routing, parts.routing, atol=1e-4)
    np.testing.assert_allclose(emb.encode(TEXTS, batch_size=3), vectors, atol=1e-4)


def test_eager_and_batched_experts_differ_only_in_kernel(tiny_model_dir, tiny_statistics):
    """A model already loaded is switched with transformers' own setter, and its config round-trips."""
    model = AutoModel.from_pretrained(str(tiny_model_dir))
    tokenizer = MoEEmbedder(str(tiny_model_dir), device="cpu", statistics=tiny_statistics).tokenizer
    eager = MoEEmbedder(model, tokenizer, device="cpu", experts_implementation="eager", attn_implementation="eager",
                        statistics=tiny_statistics)
    assert model.get_experts_implementation()[""] == "eager" and model.config._attn_implementation == "eager"
    before = eager.encode(TEXTS)
    batched = MoEEmbedder.from_config(dict(eager.config, experts_implementation="batched_mm"), model=model,
                                      tokenizer=tokenizer)
    assert model.get_experts_implementation()[""] == "batched_mm"
    assert batched.config["attn_implementation"] == "eager"
    np.testing.assert_allclose(batched.encode(TEXTS), before, atol=1e-4)


@pytest.mark.parametrize(("options", "named"), [
    ({"experts_implementation": "nope"}, ["'eager'", "'batched_mm'", "'grouped_mm'"]),
    ({"attn_implementation": "flex_attention"}, ["'eager'", "'sdpa'"]),  # OLMoE's code does not support flex
    ({"experts_implementation": "sonicmoe"}, ["CUDA"]),
])
def test_a_kernel_the_model_does_not_offer_is_refused_with_the_choices(tiny_model_dir, options, named):
    with pytest.raises(ValueError, match="choose one of") as info:
        MoEEmbedder(str(tiny_model_dir), device="cpu", **options)
    assert all(word in str(info.value) for word in named)


def test_bad_values_and_twice_given(tiny_model_dir):
    with pytest.raises(ValueError, match="experts_implementation must be None"):
        MoEEmbedder(str(tiny_model_dir), device="cpu", experts_implementation=3)
    with pytest.raises(ValueError, match="given twice"):
        MoEEmbedder(str(tiny_model_dir), device="cpu", attn_implementation="eager",
                    model_kwargs={"attn_implementation": "sdpa"})


def test_cli_flags(tiny_model_dir, tmp_path, capsys, tiny_statistics):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    out = tmp_path / "hs.npy"
    assert main(["embed", str(corpus), "-o", str(out), "--model", str(tiny_model_dir), "--mode", "hs", "--device", "cpu",
                 "--experts-implementation", "batched_mm", "--attn-implementation", "eager", "-q"]) == 0
    expected = MoEEmbedder(str(tiny_model_dir), mode="hs", device="cpu").encode(TEXTS)
    np.testing.assert_allclose(np.load(out), expected, atol=1e-4)
    assert main(["embed", str(corpus), "-o", str(tmp_path / "x.npy"), "--model", str(tiny_model_dir), "--mode", "hs",
                 "--device", "cpu", "--experts-implementation", "nope"]) == 2
    err = capsys.readouterr().err
    assert "experts_implementation='nope'" in err and "'batched_mm'" in err


def test_a_received_config_cannot_ask_for_a_hub_kernel(tiny_model_dir, tiny_statistics, caplog):
    """deepgemm / sonicmoe / flash attention may be downloaded and run: only the caller may ask for them."""
    config = dict(_embedder(tiny_model_dir, tiny_statistics, attn_implementation="eager").config,
                  experts_implementation="sonicmoe")
    loaded = MoEEmbedder.from_config(config, device="cpu")
    assert loaded.config["experts_implementation"] is None and loaded.config["attn_implementation"] == "eager"
    assert "ignoring experts_implementation='sonicmoe'" in caplog.text
