"""An embedder's description and its folder: ``config`` / ``from_config``, ``save_pretrained`` / ``read_folder`` /
``from_pretrained``, and the ONE identity of "these weights + tokenizer + vector options".

:func:`identity` is what every "same model, same vectors?" question asks: ``moee embed --resume``, the
evaluation cache, the server and saved folders. It holds the options of the asked kind (from the options
table), the resolved dtype and shapes, the model's config, and the content digests of the weight and
tokenizer files (:mod:`.files`: full SHA-256 up to 64 MiB, sampled above, memoised per process), so a
different checkpoint downloaded to the same path is a different model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import options as opts
from .files import model_files_fingerprint
from .folders import check_symlinks
from .loading import load_tokenizer, resolve_reference
from .version import __version__

logger = logging.getLogger("moee_plugins")

CONFIG_FILE = "moee_config.json"
"""A saved embedder's configuration. Not ``config.json``: that name belongs to a Hugging Face model."""
STATISTICS_FILE = "moee_statistics.json"
WEIGHTS_DIR = "moee_model"
"""Sub-folder of a saved embedder holding a copy of the base model (``save_pretrained(include_weights=True)``)."""
IDENTITY_FILE = "moee_identity.json"
"""Written beside a saved embedder's config: the identity of what was saved (for people and tools; never read
back to decide anything)."""
FOLDER_FORMATS = ("moee-plugins/embedder", "moee-plugins/sentence-transformers")
FOLDER_FORMAT_VERSION = 1
KINDS = ("vectors", "parts")


# ---------------------------------------------------------------------------------------------- config
def options_config(embedder: Any) -> dict[str, Any]:
    """Every option of the table, as ``embedder`` has it now (JSON-ready)."""
    values = dict(embedder.options)
    values.update(mode=embedder.mode, alpha=embedder.alpha, normalize=embedder.normalize,
                  max_length=embedder.max_length, batch_size=embedder.batch_size,
                  max_tokens_per_batch=embedder.max_tokens_per_batch)
    values["prompt"] = opts.OPTIONS["prompt"].check(embedder.prompt)
    values["tokenizer"] = embedder.tokenizer_reference
    return {name: values[name] for name in opts.OPTIONS}


def config(embedder: Any) -> dict[str, Any]:
    """A plain, JSON-serialisable dict that fully describes ``embedder`` (statistics and reduction included)."""
    out: dict[str, Any] = {"model": embedder.model_name}
    out.update(options_config(embedder))
    statistics, reduction = embedder.statistics, embedder.reduction
    out["statistics"] = statistics.to_dict() if statistics is not None else None
    out["reduction"] = reduction.to_dict() if hasattr(reduction, "to_dict") else reduction
    out["moee_plugins_version"] = __version__
    return out


def model_reference(model_path: Any) -> str:
    """A model as another process can load it: an alias's target, a local directory made absolute."""
    path = str(model_path)
    return os.path.abspath(path) if os.path.isdir(path) else path


def portable_options(model: str, options: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``model`` and ``options`` as any process can build the embedder from them: an alias's target, with the
    alias's defaults made explicit (custom aliases live in one process's registry only)."""
    reference = resolve_reference(model)
    defaults = dict(reference.alias.defaults) if reference.alias is not None else {}
    return reference.path, {**defaults, **options}


def from_config(cls: Any, config: Mapping[str, Any], *, model: Any = None, tokenizer: Any = None,
                trust_remote_code: bool = False, **overrides: Any) -> Any:
    """Rebuild an embedder from :attr:`MoEEmbedder.config`; ``model``/``tokenizer`` reuse already loaded objects.

    ``trust_remote_code`` is the loading caller's choice alone: a config (a file someone sent) that says
    ``"trust_remote_code": true`` never switches remote code on by itself.
    """
    kwargs = opts.options_from_config(config, trust_remote_code=trust_remote_code, overridden=overrides)
    if config.get("trust_remote_code") and not trust_remote_code:
        logger.warning("ignoring trust_remote_code=true in a config: only the caller can allow a model's own "
                       "code to run (from_config(..., trust_remote_code=True))")
    if model is None and not config.get("model"):
        raise ValueError("a MoEEmbedder config needs a 'model' entry (a hub id, a directory or 'moee:<alias>'), "
                         f"got keys {sorted(config)}")
    config_tokenizer = kwargs.pop("tokenizer", None)
    kwargs.update(overrides)
    state = {k: config[k] for k in opts.STATE_KEYS if config.get(k) is not None}
    state.update({k: kwargs.pop(k) for k in opts.STATE_KEYS if k in kwargs})
    return cls(model if model is not None else config["model"],
               tokenizer if tokenizer is not None else config_tokenizer, **state, **kwargs)


# ---------------------------------------------------------------------------------------------- identity
def value_digest(value: Any) -> str | None:
    """SHA-256 of a JSON value's canonical form (``None`` for ``None``)."""
    if value is None:
        return None
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def statistics_digest(statistics: Mapping[str, Any] | None) -> str | None:
    """SHA-256 of standardisation statistics (their numbers only, not where they came from)."""
    if statistics is None:
        return None
    return value_digest({"hidden": statistics["hidden"], "routing": statistics["routing"]})


def identity(embedder: Any, kind: str = "vectors", *, fitted: bool = True) -> dict[str, Any]:
    """What ``embedder``'s outputs of ``kind`` (``"vectors"`` or ``"parts"``) depend on.

    The options of that kind (the options table decides), the model reference, the content of its weight and
    tokenizer files (``files``; ``None`` for a model whose files are not on this machine, then its name and
    config identify it), the model's config, the resolved dtype and the part shapes; for vectors also the
    vector length and, with ``fitted``, the statistics and reduction digests.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be 'vectors' or 'parts', got {kind!r}")
    described = options_config(embedder)
    out = opts.vector_options(described) if kind == "vectors" else opts.parts_options(described)
    tokenizer = embedder.tokenizer_reference
    out.update(model=model_reference(embedder.model_path),
               files=model_files_fingerprint(str(embedder.model_path), tokenizer),
               model_config_sha256=value_digest(_model_config(embedder.model)),
               tokenizer_size=len(embedder.tokenizer), resolved_dtype=str(embedder.dtype).removeprefix("torch."),
               hidden_dim=embedder.hidden_dim, routing_dim=embedder.routing_dim)
    if kind == "vectors":
        out["dim"] = embedder.dim
        if fitted:
            statistics = embedder.statistics
            out["statistics_sha256"] = statistics_digest(statistics.to_dict()) if statistics is not None else None
            reduction = embedder.reduction
            out["reduction"] = reduction.to_dict() if hasattr(reduction, "to_dict") else reduction
    return out


def _model_config(model: Any) -> dict[str, Any]:
    """The model's config as it shapes the computation: without where it was loaded from, nor the head class it
    was saved with (saving the base model, e.g. ``save_pretrained(include_weights=True)``, rewrites that)."""
    described = model.config.to_dict()
    for key in ("_name_or_path", "architectures"):
        described.pop(key, None)
    return described


def content_identity(described: Mapping[str, Any]) -> dict[str, Any]:
    """An :func:`identity` without the model's name when its files are known: the same files under another name
    (an alias, a copy) are the same model."""
    out = dict(described)
    if (out.get("files") or {}).get("model") is not None:
        out.pop("model", None)
    return out


def identity_digest(described: Mapping[str, Any], length: int = 16) -> str:
    """A short name for an :func:`identity` ("these weights + tokenizer + options"), by content
    (:func:`content_identity`): the evaluation cache's folder name, the server's log line, a saved folder's
    ``moee_identity.json``."""
    return (value_digest(content_identity(described)) or "")[:length]


# ---------------------------------------------------------------------------------------------- folders
def save_pretrained(embedder: Any, directory: str | os.PathLike[str], *, include_weights: bool = False,
                    source: str | None = None, safe_serialization: bool = True) -> Path:
    """Write a complete, portable embedder folder: ``moee_config.json`` (options, resolved model reference),
    ``moee_statistics.json``, the tokenizer, ``moee_identity.json`` (what was saved, for people and tools), and
    with ``include_weights`` the base model in ``moee_model/``.

    Statistics are fixed first (``ensure_statistics``), so a reload never recalibrates.
    """
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    embedder.ensure_statistics()
    weights = None
    if include_weights:
        weights = WEIGHTS_DIR
        embedder.model.save_pretrained(path / WEIGHTS_DIR, safe_serialization=safe_serialization)
    described = dict(config(embedder), model=model_reference(embedder.model_path))
    statistics = described.pop("statistics")
    described.pop("moee_plugins_version")
    described["tokenizer"] = None  # saved next to the config
    saved = {"format": FOLDER_FORMATS[0], "format_version": FOLDER_FORMAT_VERSION,
             "moee_plugins_version": __version__, "source": source or embedder.model_name, "weights": weights,
             "embedder": described}
    (path / CONFIG_FILE).write_text(json.dumps(saved, indent=2), encoding="utf-8")
    if statistics is not None:
        (path / STATISTICS_FILE).write_text(json.dumps(statistics), encoding="utf-8")
    embedder.tokenizer.save_pretrained(str(path))
    described = identity(embedder)
    (path / IDENTITY_FILE).write_text(json.dumps({"digest": identity_digest(described), "identity": described},
                                                 indent=2, default=str), encoding="utf-8")
    return path


def read_folder(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The saved ``moee_config.json`` of a folder, checked: its format, and that a weights entry stays inside the
    folder (a received folder must never make us load some other local model)."""
    path = Path(directory)
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{path} is not a saved MoEE embedder: no {CONFIG_FILE}")
    check_symlinks(path)  # no file of a received folder may lead outside it
    saved = json.loads(config_path.read_text(encoding="utf-8"))
    if not isinstance(saved, dict) or saved.get("format") not in FOLDER_FORMATS or not isinstance(
            saved.get("embedder"), dict):
        raise ValueError(f"{config_path} is not a MoEE configuration (format {FOLDER_FORMATS[0]!r})")
    if int(saved.get("format_version", 0)) > FOLDER_FORMAT_VERSION:
        raise ValueError(f"{path} was saved by a newer moee-plugins (format {saved['format_version']}); "
                         "upgrade moee-plugins to load it")
    weights = saved.get("weights")
    if weights:
        inside = path.resolve()
        target = (path / str(weights)).resolve()
        if (not isinstance(weights, str) or os.path.isabs(weights) or ".." in Path(weights).parts
                or inside not in (target, *target.parents) or target == inside):
            raise ValueError(f"{config_path}: weights entry {weights!r} points outside the folder; a saved MoEE "
                             "folder may only reference weights inside itself (e.g. 'moee_model')")
        saved["weights_path"] = str(target)
    statistics_path = path / STATISTICS_FILE
    if statistics_path.is_file():
        saved["statistics"] = json.loads(statistics_path.read_text(encoding="utf-8"))
    return saved


def from_pretrained(cls: Any, directory: str | os.PathLike[str], *, trust_remote_code: bool = False,
                    tokenizer: Any = None, **overrides: Any) -> Any:
    """Load a folder written by :func:`save_pretrained` (or saved by the sentence-transformers adapter).

    ``trust_remote_code`` is the caller's alone (never the folder's); ``overrides`` replace saved options
    (e.g. ``device="cuda"``, ``batch_size=64``).
    """
    saved = read_folder(directory)
    described = dict(saved["embedder"])
    if saved.get("statistics") is not None:
        described["statistics"] = saved["statistics"]
    if saved.get("weights_path"):
        described["model"] = saved["weights_path"]
    if tokenizer is None:
        tokenizer = load_tokenizer(str(directory), bool(trust_remote_code))
    return from_config(cls, described, tokenizer=tokenizer, trust_remote_code=trust_remote_code, **overrides)
