"""Prompt templates. PromptEOL makes the last token summarise the text, which last-token pooling reads."""

from __future__ import annotations

from dataclasses import dataclass

_END_PUNCTUATION = ".?!\"'"


def paper_preprocess(text: str) -> str:
    """The paper code's text clean-up: end non-empty text with punctuation and turn ``"`` into ``'``.

    The ``"`` inside the template delimits the text, so a quote inside the text would close it early.
    """
    if text and text[-1] not in _END_PUNCTUATION:
        text = text + "."
    return text.replace('"', "'")


@dataclass(frozen=True)
class PromptTemplate:
    """A template around the text: ``prefix + preprocess(text) + suffix``.

    Truncation happens between ``prefix`` and ``suffix`` so the template's end is never cut.
    """

    name: str
    prefix: str
    suffix: str
    preprocess: bool

    def clean(self, text: str) -> str:
        """The text as it will sit inside the template (before truncation)."""
        return paper_preprocess(text) if self.preprocess else text

    def wrap(self, cleaned_text: str) -> str:
        """Put already-cleaned (possibly truncated) text into the template."""
        return f"{self.prefix}{cleaned_text}{self.suffix}"

    def format(self, text: str) -> str:
        """The full prompt for ``text``."""
        return self.wrap(self.clean(text))


PRESETS: dict[str, PromptTemplate] = {
    "prompteol": PromptTemplate("prompteol", 'This sentence : "', '" means in one word:"', True),
    "none": PromptTemplate("none", '"', '"', True),
    "raw": PromptTemplate("raw", "", "", False),
}


def resolve_prompt(prompt: str | PromptTemplate | None) -> PromptTemplate:
    """A preset name (``prompteol``, ``none``, ``raw``), a custom template with ``{text}``, or a template.

    Custom templates are used verbatim around the untouched text: ``"query: {text}"``.
    """
    if prompt is None:
        return PRESETS["raw"]
    if isinstance(prompt, PromptTemplate):
        return prompt
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a preset name or a template string with '{{text}}', got {type(prompt).__name__}")
    if prompt.lower() in PRESETS:
        return PRESETS[prompt.lower()]
    if prompt.count("{text}") != 1:
        raise ValueError(
            f"prompt {prompt!r} is neither a preset ({', '.join(PRESETS)}) nor a template containing '{{text}}' exactly once"
        )
    prefix, suffix = prompt.split("{text}")
    return PromptTemplate(prompt, prefix, suffix, False)


def prompt_to_config(prompt: PromptTemplate) -> str:
    """The string that :func:`resolve_prompt` turns back into ``prompt``."""
    if PRESETS.get(prompt.name) == prompt:
        return prompt.name
    return prompt.prefix + "{text}" + prompt.suffix


def instruction_template(base: PromptTemplate, prompt: str | PromptTemplate | None) -> PromptTemplate:
    """The one rule for per-call prompts (queries, documents, words) in every adapter.

    - ``None`` or ``""``: ``base`` (the embedder's own template);
    - a :class:`PromptTemplate`, a preset name (``prompteol``, ``none``, ``raw``) or a template with ``{text}``:
      that template;
    - any other string (``"query: "``): an instruction put in front of ``base``, so neither the instruction
      nor the template's end is ever truncated and PromptEOL still ends the input.
    """
    if prompt is None or prompt == "":
        return base
    if isinstance(prompt, PromptTemplate):
        return prompt
    if not isinstance(prompt, str):
        raise TypeError(f"a prompt must be a string or a PromptTemplate, got {type(prompt).__name__}")
    if "{text}" in prompt or prompt.lower() in PRESETS:
        return resolve_prompt(prompt)
    return PromptTemplate(f"{prompt}+{base.name}", prompt + base.prefix, base.suffix, base.preprocess)
