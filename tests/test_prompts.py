"""Prompt presets and the truncation rule: text is cut inside the template, never the template's end."""

from __future__ import annotations

import pytest

from moee_plugins.core.prompts import PRESETS, paper_preprocess, resolve_prompt


@pytest.mark.parametrize(
    ("text", "prompt"),
    [
        ("moon", 'This sentence : "moon." means in one word:"'),
        ("Doctors study disease!", 'This sentence : "Doctors study disease!" means in one word:"'),
        ('A "quoted" word?', "This sentence : \"A 'quoted' word?\" means in one word:\""),
        ('ends with a quote"', "This sentence : \"ends with a quote'\" means in one word:\""),
        ("", 'This sentence : "" means in one word:"'),
        ("snake_case stays", 'This sentence : "snake_case stays." means in one word:"'),
    ],
)
def test_prompteol_reproduces_the_paper_code(text, prompt):
    assert resolve_prompt("prompteol").format(text) == prompt


def test_none_and_raw_presets():
    assert resolve_prompt("none").format('say "hi"') == "\"say 'hi'\""
    assert resolve_prompt("none").format("moon") == '"moon."'
    assert resolve_prompt("raw").format('say "hi"') == 'say "hi"'
    assert resolve_prompt(None) is PRESETS["raw"]


def test_custom_templates():
    template = resolve_prompt("query: {text} END")
    assert template.format("abc") == "query: abc END"
    with pytest.raises(ValueError, match="exactly once"):
        resolve_prompt("no placeholder")
    with pytest.raises(TypeError, match="prompt must be"):
        resolve_prompt(3)  # type: ignore[arg-type]


def test_paper_preprocess_keeps_final_punctuation():
    assert [paper_preprocess(t) for t in ["a.", "a?", "a!", "a'", 'a"', "a"]] == ["a.", "a?", "a!", "a'", "a'", "a."]


def test_long_text_is_truncated_inside_the_template(tiny_embedder):
    long_text = "the printer jammed again and the technician came back " * 200
    ids = tiny_embedder.tokenize([long_text])[0]
    assert len(ids) == tiny_embedder.max_length
    suffix = tiny_embedder.tokenizer(PRESETS["prompteol"].suffix, add_special_tokens=False)["input_ids"]
    prefix = tiny_embedder.tokenizer(PRESETS["prompteol"].prefix, add_special_tokens=False)["input_ids"]
    assert ids[-len(suffix) :] == suffix, "the template's end must survive truncation"
    assert ids[: len(prefix)] == prefix
    decoded = tiny_embedder.tokenizer.decode(ids)
    assert decoded.startswith('This sentence : "the printer jammed') and decoded.endswith('" means in one word:"')


def test_truncation_with_small_max_length_and_custom_template(tiny_embedder):
    from moee_plugins import MoEEmbedder

    small = MoEEmbedder.from_config(tiny_embedder.config, model=tiny_embedder.model, tokenizer=tiny_embedder.tokenizer,
                                    max_length=24)
    ids = small.tokenize(["word " * 100], prompt="Represent: {text} ==> vector")[0]
    assert len(ids) <= 24
    assert small.tokenizer.decode(ids).endswith(" ==> vector")
    vectors = small.encode(["word " * 100, "word"])
    assert vectors.shape == (2, small.dim)


def test_template_longer_than_max_length_is_an_error(tiny_embedder):
    from moee_plugins import MoEEmbedder

    tiny = MoEEmbedder.from_config(tiny_embedder.config, model=tiny_embedder.model, tokenizer=tiny_embedder.tokenizer,
                                   max_length=4)
    with pytest.raises(ValueError, match="leaves no room for text"):
        tiny.encode(["a fairly long sentence that needs truncation"])
