"""``hidden_layer``: HS read from a chosen decoder layer by a hook; the default is the model's output as before."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from moee_plugins import MoEEmbedder

TEXTS = ["The hockey team won the final game.", "GPUs and printers", "moon"]


def sibling(embedder: MoEEmbedder, **options) -> MoEEmbedder:
    return MoEEmbedder.from_config(embedder.config, model=embedder.model, tokenizer=embedder.tokenizer, **options)


def reference_states(embedder: MoEEmbedder, text: str) -> tuple[torch.Tensor, ...]:
    """Every layer's state at the last token, from the model's own ``output_hidden_states`` (one text, no pads)."""
    ids = torch.tensor([embedder.tokenize([text])[0]])
    # on a copy: transformers leaves output-capturing hooks on a model asked for its hidden states, and those
    # would make the shared session model unpicklable for later tests
    model = copy.deepcopy(embedder.model)
    with torch.inference_mode():
        out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
    return tuple(state[0, -1].float() for state in out.hidden_states)


def test_the_default_and_the_last_index_are_the_models_output(tiny_embedder):
    layers = len(reference_states(tiny_embedder, "x")) - 1
    default = tiny_embedder.encode_parts(TEXTS)
    for index in (-1, layers - 1):
        parts = sibling(tiny_embedder, hidden_layer=index).encode_parts(TEXTS)
        np.testing.assert_array_equal(parts.hidden, default.hidden)
    for i, text in enumerate(TEXTS):  # after the final norm: the model's last hidden state
        np.testing.assert_allclose(default.hidden[i], reference_states(tiny_embedder, text)[-1].numpy(), atol=1e-4)


@pytest.mark.parametrize("hidden_layer", [0, 1, -2, -3])
def test_an_intermediate_layer_is_its_raw_output_and_routing_is_unchanged(tiny_embedder, hidden_layer):
    embedder = sibling(tiny_embedder, hidden_layer=hidden_layer)
    parts = embedder.encode_parts(TEXTS)
    default = tiny_embedder.encode_parts(TEXTS)
    np.testing.assert_allclose(parts.routing, default.routing, atol=1e-5)
    index = hidden_layer % 3
    for i, text in enumerate(TEXTS):
        states = reference_states(tiny_embedder, text)
        np.testing.assert_allclose(parts.hidden[i], states[index + 1].numpy(), atol=1e-4)  # [0] is the embeddings
    assert np.abs(parts.hidden - default.hidden).max() > 1e-2


def test_hidden_layer_is_part_of_the_identity_and_checked(tiny_embedder):
    other = sibling(tiny_embedder, hidden_layer=-2)
    assert other.config["hidden_layer"] == -2 and tiny_embedder.config["hidden_layer"] == -1
    assert other.fingerprint("parts") != tiny_embedder.fingerprint("parts")
    assert sibling(other).hidden_layer == -2  # a saved config keeps it
    with pytest.raises(ValueError, match="hidden_layer=3 is out of range: this model has 3 decoder layers"):
        sibling(tiny_embedder, hidden_layer=3)
    with pytest.raises(ValueError, match="hidden_layer must be an integer"):
        sibling(tiny_embedder, hidden_layer=True)

    def hooks() -> int:
        return sum(len(m._forward_hooks) for m in tiny_embedder.model.modules())

    before = hooks()
    other.encode_parts(TEXTS)
    assert hooks() == before  # the hook lives only during a forward pass


def test_several_layers_come_from_one_forward_pass_per_text(tiny_embedder):
    from moee_plugins.core.layers import encode_layers

    embedder = sibling(tiny_embedder, batch_size=2)
    rows: list[int] = []
    handle = embedder.model.register_forward_pre_hook(
        lambda _m, _a, kwargs: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    try:
        by_layer, passes = encode_layers(embedder, TEXTS, [-1, 0, -2])
    finally:
        handle.remove()
    assert passes == len(rows) == 2 and sum(rows) == len(TEXTS)  # each text through the model once
    for layer, parts in by_layer.items():
        alone = sibling(tiny_embedder, hidden_layer=layer).encode_parts(TEXTS)
        np.testing.assert_allclose(parts.hidden, alone.hidden, atol=1e-4)
        np.testing.assert_allclose(parts.routing, alone.routing, atol=1e-4)
        np.testing.assert_array_equal(parts.num_tokens, alone.num_tokens)
    with pytest.raises(ValueError, match="the same decoder layer twice"):
        encode_layers(embedder, TEXTS, [-1, 2])
