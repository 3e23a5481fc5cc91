"""The conformance matrix behind docs/architectures.md: which MoE ``model_type`` of the installed transformers
embeds, checked on a tiny random checkpoint of each (built with :mod:`moee_plugins.testing`) as users load it.

Used by ``scripts/architectures.py`` (the full matrix, one process per type) and ``tests/test_conformance.py``
(a representative subset, and the docs page rendered from the committed result). The project's own check, so
it is not shipped in the package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from moee_plugins.core.standardize import calibration_sentences
from moee_plugins.testing import build_tiny_moe, checkpoint_class

_SIDE_SUFFIXES = ("_vision", "_vision_model", "_vision_encoder", "_audio", "_audio_encoder", "_encoder",
                  "_sam_vision_model", "_talker_code_predictor", "_talker_text", "_thinker", "_mm_model")


def router_model_types() -> dict[str, str]:
    """Every ``model_type`` of the installed transformers whose modelling code records router logits,
    mapped to its modelling module (found by reading ``_can_record_outputs`` in the source: no import)."""
    import re

    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES, model_type_to_module_name

    root = Path(transformers.__file__).parent / "models"
    folders: set[str] = set()
    for path in root.glob("*/modeling_*.py"):
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"_can_record_outputs\s*=\s*\{(.*?)\n\s*\}", text, re.S):
            if "router_logits" in match.group(1):
                folders.add(path.parent.name)
    return {t: model_type_to_module_name(t) for t in sorted(CONFIG_MAPPING_NAMES)
            if model_type_to_module_name(t) in folders}


def side_model_reason(model_type: str) -> str | None:
    """Why a model type is not a text checkpoint of its own (a vision/audio tower or sub-model config), or None."""
    for suffix in _SIDE_SUFFIXES:
        if model_type.endswith(suffix):
            return f"sub-model config ({suffix.strip('_').replace('_', ' ')}) of a multimodal checkpoint, not a text model"
    return None


CONFORMANCE_TEXTS = (
    "moon",
    "The hockey team won the final game of the season after a long playoff run.",
    "GPUs and printers",
    "Encryption keys protect private messages from everyone who might try to read them.",
    "Doctors study disease!",
)
CONFORMANCE_TOLERANCE = 1e-4


def conformance_check(model_type: str, directory: str | Path) -> dict[str, Any]:
    """Build a tiny ``model_type``, load it by path through :class:`MoEEmbedder` and check it as users use it.

    Returns a row of the conformance matrix: ``status`` is ``supported`` (finite vectors, routing dim > 0,
    every mode batch-invariant within 1e-4), ``unsupported`` (a clear refusal, with ``reason``), ``not built``
    (the tiny config cannot be instantiated) or ``failed``.
    """
    import numpy as np
    import torch

    from moee_plugins import MoEEmbedder

    row: dict[str, Any] = {"model_type": model_type}
    side = side_model_reason(model_type)
    if side:
        return {**row, "status": "unsupported", "stage": "classify", "reason": side}
    try:
        checkpoint_class(model_type)
    except ValueError:
        return {**row, "status": "unsupported", "stage": "classify", "reason": _no_model_class_reason(model_type)}
    try:
        path = build_tiny_moe(Path(directory) / model_type, model_type)
    except Exception as exc:
        return {**row, "status": "not built", "stage": "build", "reason": _reason(exc)}
    torch.manual_seed(0)
    try:
        embedder = MoEEmbedder(str(path), device="cpu", batch_size=len(CONFORMANCE_TEXTS))
    except ValueError as exc:  # a deliberate refusal (encoder-decoder, no router): the message is the reason
        reason = _reason(exc).replace(str(path), "the tiny checkpoint")
        return {**row, "status": "unsupported", "stage": "load", "reason": reason}
    except Exception as exc:
        return {**row, "status": "failed", "stage": "load", "reason": _reason(exc)}
    row.update(
        model_class=type(embedder.model).__name__,
        moe_layers=embedder.moe_layers,
        routers=sorted({site.name.split(".")[-1] for site in embedder.sites}),
        experts=sorted({site.num_experts for site in embedder.sites}),
        scoring=sorted({site.scoring for site in embedder.sites}),
        routing_dim=embedder.routing_dim,
    )
    try:
        embedder.calibrate(list(calibration_sentences()[:24]))
        batched = embedder.encode_parts(list(CONFORMANCE_TEXTS))
        alone = [embedder.encode_parts([text]) for text in CONFORMANCE_TEXTS]
    except Exception as exc:
        return {**row, "status": "failed", "stage": "forward", "reason": _reason(exc)}
    differences: dict[str, float] = {}
    for mode in ("hs", "rw", "concat", "sum"):
        together = embedder.combine(batched, mode)
        single = np.concatenate([embedder.combine(parts, mode) for parts in alone])
        if not (np.isfinite(together).all() and np.isfinite(single).all()):
            return {**row, "status": "failed", "stage": "check", "reason": f"non-finite {mode} vectors"}
        differences[mode] = float(np.abs(together - single).max())
    row["max_batch_difference"] = differences
    statistics = embedder.statistics
    row["informative_routing_dims"] = int((~statistics.routing.flat).sum())
    row["informative_hidden_dims"] = int((~statistics.hidden.flat).sum())
    problems = [f"{mode} differs by {d:.2g} with the batch" for mode, d in differences.items() if d > CONFORMANCE_TOLERANCE]
    if embedder.routing_dim <= 0:
        problems.append("routing dimension is 0")
    elif row["informative_routing_dims"] == 0:  # invariance of constant vectors would prove nothing
        problems.append("router scores do not vary across texts in the tiny model (untestable as built)")
    if problems:
        return {**row, "status": "failed", "stage": "check", "reason": "; ".join(problems)}
    return {**row, "status": "supported"}


def _no_model_class_reason(model_type: str) -> str:
    """Why a type with no model class is not a checkpoint of its own: which composite config holds it."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING, CONFIG_MAPPING_NAMES, model_type_to_module_name

    config_class, module = CONFIG_MAPPING[model_type], model_type_to_module_name(model_type)
    holders = [f"`{key}` of `{parent}`" for parent in CONFIG_MAPPING_NAMES
               if parent != model_type and model_type_to_module_name(parent) == module
               for key, sub in (getattr(CONFIG_MAPPING[parent], "sub_configs", None) or {}).items() if sub is config_class]
    where = f"the {', '.join(holders)} ({config_class.__name__})" if holders else config_class.__name__
    return (f"transformers maps no model class to it: its config is {where}, built and embedded through the "
            "checkpoint type that holds it; no Auto class loads it on its own")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300]


def render_matrix(result: dict[str, Any]) -> str:
    """docs/architectures.md from a matrix result (the JSON ``scripts/architectures.py`` writes)."""
    rows = result["rows"]
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    built = sum(1 for row in rows if row["status"] in ("supported", "failed") or row.get("stage") == "load")
    lines = [
        "# Supported architectures",
        "",
        "<!-- generated by scripts/architectures.py from docs/architectures.json: do not edit by hand -->",
        "",
        f"Every `model_type` of transformers {result['transformers']} whose modelling code records router logits,",
        "built as a tiny random checkpoint from its config class, saved, loaded by path through `MoEEmbedder`",
        "and checked: finite vectors, routing dimension > 0, and all four modes batch-invariant within 1e-4",
        "(each text alone vs. inside a mixed-length batch). Regenerate with `python scripts/architectures.py`.",
        "",
        f"**{len(rows)} types found, {built} built, {counts.get('supported', 0)} passing, "
        f"{counts.get('unsupported', 0)} unsupported (reason given), {counts.get('not built', 0)} not built, "
        f"{counts.get('failed', 0)} failing.**",
        "",
        "| `model_type` | status | model run for text | MoE layers | routers read | scoring | reason |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        layers = row.get("moe_layers")
        lines.append("| `{}` | {} | {} | {} | {} | {} | {} |".format(
            row["model_type"], row["status"], f"`{row['model_class']}`" if row.get("model_class") else "",
            ", ".join(map(str, layers)) if layers else "",
            ", ".join(f"`{r}`" for r in row.get("routers", [])), ", ".join(row.get("scoring", [])),
            row.get("reason", "").replace("|", "\\|").replace("\n", " "),
        ))
    from moee_plugins.aliases import builtin_aliases

    lines += ["", "## Aliases", "", "| alias | checkpoint | |", "|---|---|---|"]
    lines += [f"| `moee:{a.name}` | {a.model_id} | {a.description} |" for a in builtin_aliases()]
    lines += ["", _MATRIX_NOTES]
    return "\n".join(lines) + "\n"


_MATRIX_NOTES = """## Notes

- **Padding.** Inputs are padded on the right and the last real token is gathered by index, so in a causal
  decoder no real token ever sees a pad, whatever its attention, recurrence or sliding window does with
  masks. No architecture here needs left padding.
- **Multimodal checkpoints** (e.g. `qwen3_vl_moe`, `llama4`, `glm4v_moe`) load whole by path; text is embedded
  through their language model, the vision tower never runs.
- **Encoder-decoder MoE** (`switch_transformers`, `nllb-moe`) is refused with a `ValueError` naming the model kind:
  MoEE reads a causal decoder's last token, and their routers drop tokens over a batch-dependent capacity.
- **Doge MoE** (`doge` with `is_moe=True`) is refused with a `ValueError`: its router mixes the logits of every
  token in the batch before choosing experts (transformers keeps this for checkpoint compatibility).
- **Qwen3-Omni** loads whole and embeds through its thinker's language model (the speech half is not loaded);
  **DiffusionGemma** through its causal prompt encoder (the diffusion decoder never runs).
- **Router sizes** come from the logits each router returns on a two-token probe, not its weight rows (Inkling's
  weight also scores shared experts; Zaya's logits add a skip expert).
- **Sub-model configs** (a multimodal checkpoint's vision or audio tower) are listed, not skipped: they are not
  text models of their own.
- **Scoring**: `softmax` or `sigmoid`, what `routing="probs"` applies; `routing="logits"` reads raw scores.
- **DeepSeekMoE-16B** (`moee:deepseek-moe`, remote code) needs `trust_remote_code=True`; its `MoEGate` returns no
  logits, so the router input is captured and the logits recomputed from the gate's weight.
"""
