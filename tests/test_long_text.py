"""Work per text is bounded by max_length: texts are cut by characters before any tokenizer call, and the token
ids stay exactly those of tokenising the whole text (normal and adversarial texts, three tokenizer families)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from moee_plugins.core.batching import cut_text, longest_token_chars, tokenize, tokenize_marking_truncated
from moee_plugins.core.prompts import PRESETS, PromptTemplate
from moee_plugins.core.standardize import calibration_sentences

ROOT = Path(__file__).resolve().parents[1]


def _fast(tokenizer: Any, **special: str) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **special)


def _byte_level_bpe() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(ROOT / "tests" / "fixtures" / "olmoe-parity" / "model"))


def _sentencepiece_like_bpe() -> Any:
    """Llama-style: spaces become ``▁``, one pre-token per text (BPE over the whole text), byte fallback."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=["<unk>", "<s>", *byte_tokens], show_progress=False)
    tokenizer.train_from_iterator(list(calibration_sentences()), trainer)
    return _fast(tokenizer, unk_token="<unk>", bos_token="<s>")


def _wordpiece() -> Any:
    """BERT-style: lower-cases, strips accents, drops whitespace and control characters, [UNK] for long words."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=500, special_tokens=["[UNK]", "[PAD]"], show_progress=False)
    tokenizer.train_from_iterator(list(calibration_sentences()), trainer)
    return _fast(tokenizer, unk_token="[UNK]", pad_token="[PAD]")


@pytest.fixture(scope="module", params=["byte-level-bpe", "sentencepiece-bpe", "wordpiece"])
def tokenizer(request: pytest.FixtureRequest) -> Any:
    return {"byte-level-bpe": _byte_level_bpe, "sentencepiece-bpe": _sentencepiece_like_bpe,
            "wordpiece": _wordpiece}[request.param]()


def _long_texts() -> dict[str, str]:
    rng = random.Random(0)
    prose = " ".join(calibration_sentences())
    return {
        "prose": (prose * (1 + 20_000 // len(prose)))[:20_000],
        "one character": "a" * 20_000,
        "no spaces": "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(20_000)),
        "multi-byte": "日本語のテキストと絵文字🙂\uff0c" * 1_500,
        "combining marks": "e\u0301o\u0308" * 5_000,
        "quotes": '"' * 20_000,
        "whitespace run": "a start " + " \n\t" * 10_000 + " and an end",
        "space runs between words": ("word" + " " * 300) * 70,
        "digits": "1234567890" * 2_000,
        # words longer than WordPiece's 100 characters become one [UNK] whole, but are split when cut short
        **{f"long words, shift {k}": "w " * k + ("word " * 13 + "x" * 150 + " ") * 100 for k in (0, 20, 40, 60, 80)},
    }


def _reference_ids(tok: Any, template: PromptTemplate, text: str, max_length: int) -> tuple[list[int], bool]:
    """Today's rule on the whole text: the prompt's ids, or when longer than max_length, the text cut after
    its first tokens (offsets of the whole text's tokenisation) with merges across the cut shaved."""
    cleaned = template.clean(text)
    ids = list(tok(template.wrap(cleaned), add_special_tokens=True)["input_ids"])
    if len(ids) <= max_length:
        return ids, False
    overhead = len(tok(template.wrap(""), add_special_tokens=True)["input_ids"])
    offsets = tok(cleaned, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    keep = min(len(offsets), max_length - overhead)
    while keep > 0:
        ids = list(tok(template.wrap(cleaned[: offsets[keep - 1][1]]), add_special_tokens=True)["input_ids"])
        if len(ids) <= max_length:
            return ids, True
        keep -= len(ids) - max_length
    return list(tok(template.wrap(""), add_special_tokens=True)["input_ids"]), True


@pytest.mark.parametrize("max_length", [48, 512])
@pytest.mark.parametrize("prompt", ["prompteol", "raw"])
def test_cut_texts_give_exactly_the_ids_of_the_whole_texts(tokenizer: Any, prompt: str, max_length: int):
    template = PRESETS[prompt]
    texts = _long_texts()
    ids, truncated = tokenize_marking_truncated(tokenizer, template, list(texts.values()), max_length)
    for row, (name, text) in enumerate(texts.items()):
        expected, was_cut = _reference_ids(tokenizer, template, text, max_length)
        assert ids[row] == expected, f"{name}: ids differ from the whole text's"
        assert (row in truncated) == was_cut, name
        assert len(ids[row]) <= max_length


def test_texts_around_the_first_cut_keep_their_ids(tokenizer: Any):
    """Lengths on both sides of where the first cut falls: short texts take today's path untouched."""
    template, max_length = PRESETS["prompteol"], 64
    prose = " ".join(calibration_sentences()) * 2
    first_cut = (max_length + 8) * 8 + 8 * longest_token_chars(tokenizer)  # about where the first cut falls
    texts = [prose[:n] for n in range(first_cut - 40, first_cut + 40, 7)] + ["", "a", "Short."]
    ids = tokenize(tokenizer, template, texts, max_length)
    assert ids == [_reference_ids(tokenizer, template, t, max_length)[0] for t in texts]


class _RecordingTokenizer:
    """A tokenizer that records the longest string any call hands it (the public seam: the tokenizer passed in)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.longest_input = inner, 0

    def __call__(self, text: Any, **kwargs: Any) -> Any:
        texts = [text] if isinstance(text, str) else list(text)
        self.longest_input = max([self.longest_input, *(len(t) for t in texts)])
        return self.inner(text, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_no_tokenizer_call_sees_more_than_a_bounded_prefix():
    """The longest string handed to the tokenizer is the same for a 100 KB and a 4 MB text: flat in its length."""
    template, max_length = PRESETS["prompteol"], 128
    seen = []
    for size in (100_000, 4_000_000):
        recording = _RecordingTokenizer(_byte_level_bpe())
        for text in ("word " * size)[:size], "x" * size, "日本" * (size // 2):
            tokenize(recording, template, [text, "short"], max_length)
        seen.append(recording.longest_input)
    assert seen[0] == seen[1] < 100_000


def test_cut_text_leaves_texts_shorter_than_the_cut_alone():
    tok = _byte_level_bpe()
    assert cut_text(tok, "A short text", 512, PRESETS["prompteol"].clean) == "A short text."
    long = "word " * 100_000
    assert long.startswith(cut_text(tok, long, 512)) and len(cut_text(tok, long, 512)) < len(long) // 10


_MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    from moee_plugins import MoEEmbedder
    embedder = MoEEmbedder(sys.argv[1], mode="sum", device="cpu")
    embedder.encode(["warm up the model and its calibration"])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # the address-space cap keeps the machine safe if the path is unbounded (it then dies, as a long text used to)
    used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
    cap = used + int(sys.argv[2]) * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    text = "All work and no play makes a long document. " * (20 * 2**20 // 45)
    vectors = embedder.encode([text, "a short one"])
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"grew_mb": (after - before) / 1024, "shape": list(vectors.shape), "chars": len(text)}))
""")


def test_a_20_mb_text_embeds_within_a_small_memory_budget(tiny_model_dir: Path):
    """Peak resident memory grows by less than 200 MB for a 20 MB text (the text itself is 20 MB; tokenising it
    whole took ~19 GB), under an address-space cap of 1.5 GB above what the loaded model already maps."""
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(tiny_model_dir), "1536"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["chars"] > 20_000_000 and result["shape"][0] == 2
    assert result["grew_mb"] < 200, result
