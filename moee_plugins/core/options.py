"""The one declared table of :class:`~moee_plugins.MoEEmbedder` options.

Each option has a default, a check that validates and normalises a value once (numpy scalars become
Python numbers, ``torch.float16`` becomes ``"float16"``), and a kind saying what it changes:

- ``parts``: the raw channels (HS, RW) a text gets: caches of parts and fingerprints must include it;
- ``vectors``: only how parts become vectors (mode, alpha, standardisation): parts can be reused;
- ``runtime``: neither (batching, consent to run code): never part of a fingerprint.

The table drives the embedder's ``config``, ``from_config``, alias defaults, fingerprints and the
adapters' option splitting, so no other module lists option names by hand.
"""

from __future__ import annotations

import hashlib
import json
import logging
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from .chunking import LONG_TEXTS
from .combine import MODES
from .layers import check_hidden_layer
from .pipeline import AUTO, DEFAULT_ROW_CAP
from .pooling import POOLINGS
from .prompts import PromptTemplate, prompt_to_config, resolve_prompt
from .routers import ROUTING_KINDS

logger = logging.getLogger(__name__)

Kind = Literal["parts", "vectors", "runtime"]

QUANTIZATIONS = ("4bit", "8bit")
DTYPES = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
_TORCH_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
MAX_ALPHA = 1e6
# what model_kwargs may not carry: each has its own option, and consent to run code is the caller's alone
_RESERVED_MODEL_KWARGS = {
    "trust_remote_code": "pass trust_remote_code=... to MoEEmbedder itself (it is never read from model_kwargs)",
    "dtype": "use the dtype option", "torch_dtype": "use the dtype option",
    "quantization_config": "use the quantization option", "config": "pass a loaded model instead",
}

# the from_pretrained arguments a config from a FILE may set (docs/security.md), each with its value check:
# none of them can run code, read another file or place the model elsewhere
_ATTENTION = ("eager", "sdpa", "flex_attention")  # flash attention may fetch a kernel from the Hub
_EXPERTS = ("eager", "batched_mm", "grouped_mm")
FILE_MODEL_KWARGS: dict[str, Callable[[Any], bool]] = {
    "revision": lambda v: isinstance(v, str) and 0 < len(v) <= 200 and ".." not in v,
    "attn_implementation": lambda v: v in _ATTENTION,
    "experts_implementation": lambda v: v in _EXPERTS,
    "low_cpu_mem_usage": lambda v: isinstance(v, bool),
}


# kernels computed by torch itself: the only ones a received config may ask for (others, such as deepgemm, sonicmoe or
# flash attention without its package, are fetched from the Hugging Face Hub and run: the caller's choice alone)
FILE_KERNELS = ("eager", "sdpa", "flex_attention", "batched_mm", "grouped_mm")


class _Default:
    """Marks an argument the caller did not give (so an alias's default, then the table's, applies)."""

    def __repr__(self) -> str:
        return "<default>"

    def __reduce__(self) -> str:
        return "DEFAULT"


DEFAULT: Any = _Default()


# ---------------------------------------------------------------------------------------------- checks
def _int(name: str, value: Any, *, minimum: int = 1, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        what = "None or a positive integer" if optional else "a positive integer"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def _token_budget(value: Any) -> int | str | None:
    if isinstance(value, str) and value == AUTO:
        return AUTO
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ValueError(f"max_tokens_per_batch must be 'auto', None or a positive integer, got {value!r}")
    return int(value)


def check_alpha(value: Any) -> float:
    """A finite weight in [0, 1e6]: larger values only overflow, they never change a ranking further."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not np.isfinite(float(value)):
        raise ValueError(f"alpha must be a finite number >= 0, got {value!r}")
    alpha = float(value)
    if not 0 <= alpha <= MAX_ALPHA:
        raise ValueError(f"alpha must be a finite number >= 0 and at most {MAX_ALPHA:g}, got {value!r}")
    return alpha


def check_positive_int(value: Any, name: str = "batch_size") -> int:
    """A positive integer (numpy integers accepted), named ``name`` in the error."""
    return _int(name, value)  # type: ignore[return-value]


def _choice(name: str, choices: tuple[Any, ...]) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if not isinstance(value, (str, type(None))) or value not in choices:
            raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        return value

    return check


def _mode(value: Any) -> str:
    return _choice("mode", MODES)(value)


def _prompt(value: Any) -> str:
    if not isinstance(value, (str, PromptTemplate)):
        raise TypeError(f"prompt must be a preset name or a template string with '{{text}}', got {type(value).__name__}")
    return prompt_to_config(resolve_prompt(value))


def _standardize(value: Any) -> str | None:
    if value not in ("auto", None) or isinstance(value, bool):
        raise ValueError(f"standardize must be 'auto' or None, got {value!r}")
    return value


def _flag(name: str) -> Callable[[Any], bool]:
    """The check of a True/False option (numpy's bool too; never a truthy string or number)."""

    def check(value: Any) -> bool:
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name} must be True or False, got {value!r}")
        return bool(value)

    return check


_normalize, _trust = _flag("normalize"), _flag("trust_remote_code")


def _layers(value: Any) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise TypeError(f"layers must be a sequence of decoder-layer indices, got {value!r}")
    items = list(value)
    if any(isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Integral) for x in items):
        raise TypeError(f"layers must be a sequence of decoder-layer indices, got {value!r}")
    if not items:
        raise ValueError("layers=[] selects no router: give at least one MoE layer index, or None for all of them")
    return [int(x) for x in items]


def _dtype(value: Any) -> str:
    if isinstance(value, torch.dtype):
        if value not in _TORCH_DTYPES:
            raise ValueError(f"dtype {value} is not supported: use 'auto', 'float32', 'bfloat16' or 'float16'")
        return _TORCH_DTYPES[value]
    if not isinstance(value, str) or value not in DTYPES:
        raise ValueError(f"dtype must be 'auto', one of {sorted(set(DTYPES) - {'auto'})} or a torch.dtype, got {value!r}")
    return value


def _quantization(value: Any) -> str | None:
    if value is not None and value not in QUANTIZATIONS:
        raise ValueError(f"quantization must be None or one of {QUANTIZATIONS}, got {value!r}")
    return value


def _tokenizer(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"tokenizer (in a config) must be None or a hub id / directory, got {type(value).__name__}")
    return value


def _implementation(name: str) -> Callable[[Any], str | None]:
    """The check of a kernel choice: None (transformers' own default) or a name; whether the loaded model offers
    that name is checked when it is loaded (:func:`moee_plugins.core.loading.check_implementations`)."""

    def check(value: Any) -> str | None:
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ValueError(f"{name} must be None (transformers' default) or a name such as 'eager', got {value!r}")
        return value.strip() if isinstance(value, str) else None

    return check


def _model_kwargs(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"model_kwargs must be a dict of from_pretrained arguments, got {type(value).__name__}: "
                        f"{value!r:.80}")
    for key in value:
        if not isinstance(key, str):
            raise TypeError(f"model_kwargs keys must be strings, got {key!r}")
        if key in _RESERVED_MODEL_KWARGS:
            raise ValueError(f"model_kwargs may not set {key!r}: {_RESERVED_MODEL_KWARGS[key]}")
    return dict(value)


# ---------------------------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Option:
    """One embedder option: its default, its check, and what it changes."""

    name: str
    default: Any
    kind: Kind
    check: Callable[[Any], Any]
    help: str
    from_alias: bool = True  # may a ModelAlias's defaults set it
    from_file: bool = True  # is a saved config's value honoured (never for consent to run code)


OPTIONS: dict[str, Option] = {o.name: o for o in (
    Option("tokenizer", None, "parts", _tokenizer, "hub id or directory of the tokenizer (default: the model's)",
           from_alias=False),
    Option("mode", "sum", "vectors", _mode, "hs, rw, concat or sum"),
    Option("prompt", "prompteol", "parts", _prompt, "prompteol, none, raw or a template with {text}"),
    Option("pooling", "last", "parts", _choice("pooling", POOLINGS), "last (last real token) or mean"),
    Option("routing", "logits", "parts", _choice("routing", ROUTING_KINDS), "logits or probs"),
    Option("alpha", 1.0, "vectors", check_alpha, "weight of cos(RW) in sum mode, 0..1e6"),
    Option("layers", None, "parts", _layers, "decoder layers whose routers to use (None: all)"),
    Option("hidden_layer", -1, "parts", check_hidden_layer,
           "decoder layer whose hidden state is HS: -1 (the last, after the final norm), else that layer's raw output"),
    Option("standardize", "auto", "vectors", _standardize, "'auto' (fixed statistics) or None"),
    Option("normalize", True, "vectors", _normalize, "L2-normalise hs/rw/concat vectors"),
    Option("dtype", "auto", "parts", _dtype, "auto, float32, bfloat16 or float16"),
    Option("quantization", None, "parts", _quantization, "None, 4bit or 8bit (routers stay full precision)"),
    Option("max_length", 512, "parts", lambda v: _int("max_length", v), "tokens per text, prompt included"),
    Option("long_texts", "truncate", "parts", _choice("long_texts", LONG_TEXTS),
           "a text over max_length: 'truncate' (cut inside the prompt) or 'chunk' (windows, raw parts pooled)"),
    Option("chunk_overlap", 0, "parts", lambda v: _int("chunk_overlap", v, minimum=0),
           "tokens each window repeats from the previous one (long_texts='chunk')"),
    Option("batch_size", DEFAULT_ROW_CAP, "runtime", check_positive_int,
           "row cap of a forward pass (the token budget usually closes a batch first)"),
    Option("max_tokens_per_batch", AUTO, "runtime", _token_budget,
           "padded-token budget of a forward pass: 'auto' (chosen per device), None (none) or a number"),
    Option("trust_remote_code", False, "runtime", _trust, "run a checkpoint's own code (the caller's choice only)",
           from_alias=False, from_file=False),
    Option("model_kwargs", None, "parts", _model_kwargs, "extra from_pretrained arguments"),
    # kernels compute the same function: vectors agree within 1e-4 (tests/test_kernel_options.py), so not identity
    Option("experts_implementation", None, "runtime", _implementation("experts_implementation"),
           "expert kernels: eager, batched_mm, grouped_mm, ... (None: transformers' default)"),
    Option("attn_implementation", None, "runtime", _implementation("attn_implementation"),
           "attention kernels: eager, sdpa, flex_attention, ... (None: transformers' default)"),
)}
"""Every option, in config order."""

STATE_KEYS = ("statistics", "reduction")
"""Config entries that are fitted state, not options (restored by ``from_config``)."""
INFO_KEYS = ("model", "moee_plugins_version")


def names(kind: Kind | None = None) -> tuple[str, ...]:
    """Option names, all of them or those of one kind."""
    return tuple(name for name, o in OPTIONS.items() if kind is None or o.kind == kind)


def validate(values: Mapping[str, Any], *, source: str = "") -> dict[str, Any]:
    """``values`` checked and normalised; an unknown name is an error that lists the valid ones."""
    unknown = sorted(set(values) - set(OPTIONS))
    if unknown:
        where = f" in {source}" if source else ""
        raise TypeError(f"unknown MoEEmbedder option(s){where}: {unknown}; valid options: {sorted(OPTIONS)}")
    return {name: OPTIONS[name].check(value) for name, value in values.items()}


def resolve(given: Mapping[str, Any], alias_defaults: Mapping[str, Any] | None = None,
            alias_name: str = "") -> dict[str, Any]:
    """Every option: what the caller gave, else the alias's default, else the table's, validated once."""
    alias_defaults = dict(alias_defaults or {})
    refused = sorted(k for k in alias_defaults if k in OPTIONS and not OPTIONS[k].from_alias)
    if refused:
        raise ValueError(f"alias {alias_name!r} may not set {refused} as defaults")
    alias_values = validate(alias_defaults, source=f"the defaults of alias {alias_name!r}")
    chosen = validate({k: v for k, v in given.items() if v is not DEFAULT})
    out = {}
    for name, option in OPTIONS.items():
        if name in chosen:
            out[name] = chosen[name]
        elif name in alias_values:
            out[name] = alias_values[name]
        else:
            out[name] = option.check(option.default)
    return out


def split(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(embedder options, everything else): for adapters whose one dict mixes both."""
    ours = {k: v for k, v in values.items() if k in OPTIONS or k in STATE_KEYS}
    return ours, {k: v for k, v in values.items() if k not in ours}


def needs_statistics(values: Mapping[str, Any]) -> bool:
    """Whether vectors built with these options are standardised and have no statistics yet (hs never is): the
    one rule, for an embedder and for options another process will build one from."""
    standardize = values.get("standardize", OPTIONS["standardize"].default)
    mode = values.get("mode", OPTIONS["mode"].default)
    return standardize is not None and mode != "hs" and values.get("statistics") is None


def split_model_kwargs(model_kwargs: Mapping[str, Any] | None, *, adapter_keys: tuple[str, ...] = (),
                       outer_keys: tuple[str, ...] = ("trust_remote_code", "device"), owner: str = "the constructor",
                       ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A framework's one ``model_kwargs`` dict -> (embedder options, the adapter's own ``adapter_keys``,
    ``from_pretrained`` arguments, a nested ``model_kwargs`` merged in). ``torch_dtype`` reads as ``dtype``;
    ``outer_keys`` belong to ``owner`` itself and are refused here (they would be given twice)."""
    if model_kwargs is None:
        return {}, {}, {}
    if not isinstance(model_kwargs, Mapping):
        raise TypeError(f"model_kwargs must be a dict, got {type(model_kwargs).__name__}")
    values = dict(model_kwargs)
    if "torch_dtype" in values:
        if "dtype" in values and values["dtype"] != values["torch_dtype"]:
            raise ValueError("model_kwargs sets both 'dtype' and 'torch_dtype' to different values")
        values["dtype"] = values.pop("torch_dtype")
    for key in outer_keys:
        if key in values:
            raise ValueError(f"pass {key}=... to {owner} itself, not inside model_kwargs")
    adapter = {k: values.pop(k) for k in adapter_keys if k in values}
    nested = values.pop("model_kwargs", None) or {}
    if not isinstance(nested, Mapping):
        raise TypeError(f"model_kwargs['model_kwargs'] must be a dict, got {type(nested).__name__}")
    embedder_options, loading = split(values)
    return embedder_options, adapter, {**loading, **nested}


def file_model_kwargs(value: Any) -> dict[str, Any]:
    """The ``model_kwargs`` of a config that came from a file or dict someone may have sent: only the loading
    arguments of :data:`FILE_MODEL_KWARGS` (docs/security.md), each with a checked value; anything else (pickle
    loading, code revisions, device maps, offload folders, ...) is refused by name. The caller's own keyword
    arguments are never restricted this way."""
    kwargs = _model_kwargs(value)
    refused = sorted(k for k in kwargs if k not in FILE_MODEL_KWARGS)
    if refused:
        raise ValueError(f"a saved config may not set model_kwargs {refused}: a config from a file may only set "
                         f"{sorted(FILE_MODEL_KWARGS)} (see docs/security.md); pass other loading arguments "
                         "yourself, e.g. from_pretrained(folder, model_kwargs={...}) or from_config(config, "
                         "model_kwargs={...})")
    for key, check in FILE_MODEL_KWARGS.items():
        if key in kwargs and not check(kwargs[key]):
            raise ValueError(f"a saved config's model_kwargs[{key!r}] = {kwargs[key]!r:.80} is not allowed "
                             "(see docs/security.md)")
    return kwargs


def options_from_config(config: Mapping[str, Any], *, trust_remote_code: bool = False,
                        overridden: Iterable[str] = ()) -> dict[str, Any]:
    """The options a saved config asks for, with consent to run code set by the LOADING caller, never the file,
    and loading arguments limited to the file allowlist (:func:`file_model_kwargs`); the options the caller
    gives (``overridden``) replace the file's, so theirs are not read."""
    if not isinstance(config, Mapping):
        raise TypeError(f"a MoEEmbedder config must be a dict, got {type(config).__name__}")
    unknown = sorted(set(config) - set(OPTIONS) - set(STATE_KEYS) - set(INFO_KEYS))
    if unknown:
        raise ValueError(f"unknown MoEEmbedder config keys: {unknown}; valid: {sorted(OPTIONS)}")
    out = {k: v for k, v in config.items() if k in OPTIONS and OPTIONS[k].from_file and k not in set(overridden)}
    if "model_kwargs" in out:
        out["model_kwargs"] = file_model_kwargs(out["model_kwargs"])
    out["trust_remote_code"] = _trust(trust_remote_code)
    for name in ("experts_implementation", "attn_implementation"):
        if out.get(name) is not None and out[name] not in FILE_KERNELS:
            logger.warning("ignoring %s=%r in a config: kernels other than %s may be fetched from the Hugging Face Hub "
                           "and run; pass %s=... yourself to use it", name, out[name], list(FILE_KERNELS), name)
            out[name] = None
    return out


def of_kind(config: Mapping[str, Any], *kinds: Kind) -> dict[str, Any]:
    """The options of ``config`` whose kind is one of ``kinds``."""
    return {k: config[k] for k, o in OPTIONS.items() if o.kind in kinds and k in config}


def parts_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """The options that change the raw parts (HS, RW) of a text."""
    return of_kind(config, "parts")


def vector_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """The options that change a vector (raw parts or their combination); batching and consent are left out."""
    return of_kind(config, "parts", "vectors")


def digest(value: Any, length: int = 16) -> str:
    """A short SHA-256 of a JSON-serialisable value (keys sorted)."""
    blob = json.dumps(value, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:length]


def options_table() -> list[dict[str, Any]]:
    """The table itself as plain data (for docs and ``--help``)."""
    return [{"name": o.name, "default": o.default, "kind": o.kind, "help": o.help} for o in OPTIONS.values()]
