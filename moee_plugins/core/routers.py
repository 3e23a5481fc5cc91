"""Find every MoE router in a model and capture its scores during one forward pass.

Routers are located with the metadata transformers itself uses to record router logits
(``_can_record_outputs["router_logits"]``: the router class and which output is the logits), but
captured by our own forward hooks. That keeps the capture keyed by module name, hence by layer
(dense layers, interleaved MoE layers and several routers per layer are all handled), costs nothing
when the model does not record router logits, and never asks the model for aux losses. Models
without that metadata (remote code such as DeepSeekMoE's ``MoEGate``) fall back to router-like
modules whose weight has one row per expert; their logits are recomputed from the router's input.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .pooling import pool

ROUTING_KINDS = ("logits", "probs")

# model types whose routers score experts with a sigmoid (everything else uses a softmax)
SIGMOID_MODEL_TYPES = frozenset({"deepseek_v3", "glm4_moe", "glm4v_moe", "llama4", "llama4_text", "dots1",
                                 "inkling", "inkling_text"})

# class names of remote-code routers that return no logits; logits are recomputed from their input
_INPUT_ROUTER_CLASS_NAMES = frozenset({"MoEGate"})
_ROUTER_NAME_PATTERN = re.compile(r"(router|gate|gating)$", re.IGNORECASE)
_LAYER_INDEX = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")
_PROBE_TOKENS = 2

logger = logging.getLogger(__name__)

Extractor = Callable[[nn.Module, tuple[Any, ...], Any], torch.Tensor]


@dataclass(frozen=True)
class RouterSite:
    """One router: where it is, which decoder layer it belongs to, and how to read its logits."""

    name: str
    layer: int
    num_experts: int
    scoring: str
    module: nn.Module = field(repr=False, compare=False)
    extract: Extractor = field(repr=False, compare=False)


def _output_index_extractor(index: int) -> Extractor:
    def extract(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> torch.Tensor:
        return output[index] if isinstance(output, (tuple, list)) else output

    return extract


def _router_weight(module: nn.Module) -> torch.Tensor | None:
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.ndim == 2:
        return weight
    for _, param in module.named_parameters():
        if param.ndim == 2:
            return param
    return None


def _input_linear_extractor(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> torch.Tensor:
    hidden = inputs[0]
    weight = _router_weight(module)
    assert weight is not None
    return F.linear(hidden.reshape(-1, hidden.shape[-1]).float(), weight.float())


def _layer_index(name: str, fallback: int) -> int:
    match = _LAYER_INDEX.search(name)
    return int(match.group(1)) if match else fallback


def scoring_function(config: Any) -> str:
    """``softmax`` or ``sigmoid``: how this model turns router logits into expert scores."""
    declared = getattr(config, "scoring_func", None)
    if declared in ("softmax", "sigmoid"):
        return declared
    text_config = getattr(config, "text_config", None) or config
    model_type = getattr(text_config, "model_type", None) or getattr(config, "model_type", "")
    return "sigmoid" if model_type in SIGMOID_MODEL_TYPES else "softmax"


def _recorder_specs(model: nn.Module) -> list[tuple[Any, str | None, int, str | None]]:
    """(target_class, class_name, index, layer_name) for every router-logit recorder the model declares."""
    specs: list[tuple[Any, str | None, int, str | None]] = []
    for module in model.modules():
        recordable = getattr(type(module), "_can_record_outputs", None) or {}
        entries = recordable.get("router_logits")
        if entries is None:
            continue
        for spec in entries if isinstance(entries, (list, tuple)) else [entries]:
            if isinstance(spec, (type, str)):  # bare class / class name: transformers reads output index 1
                specs.append((spec if isinstance(spec, type) else None, spec if isinstance(spec, str) else None, 1, None))
            else:
                specs.append((spec.target_class, spec.class_name, spec.index, spec.layer_name))
    return specs


def _declared_routers(model: nn.Module) -> list[tuple[str, nn.Module, Extractor]]:
    found: list[tuple[str, nn.Module, Extractor]] = []
    for target_class, class_name, index, layer_name in _recorder_specs(model):
        for name, module in model.named_modules():
            hit = (target_class is not None and isinstance(module, target_class)) or (
                class_name is not None and name.endswith(class_name)
            )
            if not hit:
                continue
            if layer_name is not None and f".{layer_name.strip('.')}." not in f".{name}.":
                continue
            found.append((name, module, _output_index_extractor(index)))
    return found


def _fallback_routers(model: nn.Module, num_experts: int | None) -> list[tuple[str, nn.Module, Extractor]]:
    found: list[tuple[str, nn.Module, Extractor]] = []
    for name, module in model.named_modules():
        cls = type(module).__name__
        leaf = name.rsplit(".", 1)[-1]
        if cls not in _INPUT_ROUTER_CLASS_NAMES and not (_ROUTER_NAME_PATTERN.search(leaf) or _ROUTER_NAME_PATTERN.search(cls)):
            continue
        weight = _router_weight(module)
        if weight is None or weight.shape[0] < 2:
            continue  # shared-expert gates score one expert: not a router over experts
        if num_experts is not None and weight.shape[0] != num_experts:
            continue
        found.append((name, module, _input_linear_extractor))
    return found


def _config_num_experts(config: Any) -> int | None:
    for key in ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 1:
            return value
    return None


def find_router_sites(model: nn.Module) -> list[RouterSite]:
    """Every router of ``model`` in layer order. Raises ``ValueError`` if there is none."""
    config = getattr(model, "config", None)
    candidates = _declared_routers(model) or _fallback_routers(model, _config_num_experts(config))
    names = {name for name, _, _ in candidates}
    # keep the innermost router when one module wraps another (jetmoe's attention contains its MoA router)
    candidates = [c for c in candidates if not any(other.startswith(c[0] + ".") for other in names)]
    seen: set[str] = set()
    sites: list[RouterSite] = []
    scoring = scoring_function(config)
    for ordinal, (name, module, extract) in enumerate(candidates):
        if name in seen:
            continue
        seen.add(name)
        weight = _router_weight(module)
        if weight is None:
            raise ValueError(f"router module {name!r} ({type(module).__name__}) has no 2-D weight to size its output")
        sites.append(RouterSite(name, _layer_index(name, ordinal), int(weight.shape[0]), scoring, module, extract))
    if not sites:
        model_name = getattr(config, "_name_or_path", None) or type(model).__name__
        model_type = getattr(config, "model_type", "?")
        raise ValueError(
            f"{model_name} (model_type={model_type!r}, {type(model).__name__}) has no Mixture-of-Experts router: "
            "MoEE needs a model whose layers route tokens to experts (e.g. OLMoE, Qwen-MoE, Mixtral, DeepSeek-MoE)."
        )
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return sorted(sites, key=lambda s: (s.layer, order[s.name]))


def sized_from_logits(model: nn.Module, sites: list[RouterSite]) -> list[RouterSite]:
    """``sites`` with each router sized from the logits it returns on a two-token probe forward pass.

    A router's weight does not always have one row per scored expert: Inkling's weight also scores its shared
    experts but returns only the routed logits, and Zaya's router is an MLP whose logits add a skip expert
    to its experts. Only what the hook will read counts. If the probe itself fails, the weight sizes are kept
    (the real forward pass then reports the model's own error).
    """
    measured: dict[str, int] = {}

    def recorder(site: RouterSite) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            logits = site.extract(module, inputs, output)
            if isinstance(logits, torch.Tensor) and logits.numel() % _PROBE_TOKENS == 0:
                measured.setdefault(site.name, logits.numel() // _PROBE_TOKENS)

        return hook

    try:
        device = model.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        device = next(model.parameters()).device
    input_ids = torch.ones((1, _PROBE_TOKENS), dtype=torch.long, device=device)
    handles = [site.module.register_forward_hook(recorder(site)) for site in sites]
    try:
        with torch.inference_mode():
            model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                  position_ids=torch.arange(_PROBE_TOKENS, device=device)[None], use_cache=False)
    except Exception as exc:  # the probe only refines sizes; the real forward reports the error
        logger.debug("router size probe failed (%s: %s); router weight sizes kept", type(exc).__name__, exc)
        return sites
    finally:
        for handle in handles:
            handle.remove()
    resized = [replace(site, num_experts=measured.get(site.name, site.num_experts)) for site in sites]
    for old, new in zip(sites, resized, strict=True):
        if old.num_experts != new.num_experts:
            logger.info("router %s: weight has %d rows, logits score %d experts", old.name, old.num_experts,
                        new.num_experts)
    return resized


def select_sites(sites: list[RouterSite], layers: list[int] | None) -> list[RouterSite]:
    """The routers of the requested decoder layers (all when ``layers`` is None)."""
    if layers is None:
        return sites
    available = sorted({s.layer for s in sites})
    unknown = [layer for layer in layers if layer not in available]
    if unknown:
        raise ValueError(f"layers {unknown} have no MoE router; MoE layers of this model: {available}")
    wanted = set(layers)
    return [s for s in sites if s.layer in wanted]


class RoutingCapture:
    """Forward hooks that pool each router's scores on the device as the forward pass runs."""

    def __init__(self, sites: list[RouterSite], pooling: str, routing: str) -> None:
        if routing not in ROUTING_KINDS:
            raise ValueError(f"routing must be one of {ROUTING_KINDS}, got {routing!r}")
        self.sites = sites
        self.pooling = pooling
        self.routing = routing
        self._attention_mask: torch.Tensor | None = None
        self._pooled: dict[int, torch.Tensor] = {}

    def _hook(self, position: int) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
        site = self.sites[position]

        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            mask = self._attention_mask
            if mask is None:
                return
            batch, seq = mask.shape
            logits = site.extract(module, inputs, output)
            if logits.numel() != batch * seq * site.num_experts:
                raise RuntimeError(
                    f"router {site.name} returned {tuple(logits.shape)}, "
                    f"expected {batch}x{seq} tokens x {site.num_experts} experts"
                )
            scores = logits.reshape(batch, seq, site.num_experts)
            if self.pooling == "last":  # scoring is per token: pool first, transform only what is kept
                self._pooled[position] = self._score(pool(scores, mask, "last"), site)
            else:
                self._pooled[position] = pool(self._score(scores.float(), site), mask.to(scores.device), self.pooling)

        return hook

    def _score(self, scores: torch.Tensor, site: RouterSite) -> torch.Tensor:
        """Raw logits, or the model's own scoring over all experts (float32)."""
        if self.routing == "logits":
            return scores
        return torch.sigmoid(scores) if site.scoring == "sigmoid" else torch.softmax(scores, dim=-1)

    @contextmanager
    def attached(self) -> Iterator[RoutingCapture]:
        """Hooks live only inside this block, so the user's model is left untouched afterwards."""
        handles = [site.module.register_forward_hook(self._hook(i)) for i, site in enumerate(self.sites)]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
            self._attention_mask = None
            self._pooled = {}

    def start_batch(self, attention_mask: torch.Tensor) -> None:
        self._attention_mask = attention_mask
        self._pooled = {}

    def collect(self, device: torch.device) -> torch.Tensor:
        """The pooled scores of every router, concatenated in layer order: (batch, total experts)."""
        missing = [self.sites[i].name for i in range(len(self.sites)) if i not in self._pooled]
        if missing:
            raise RuntimeError(f"routers {missing} did not run during the forward pass")
        return torch.cat([self._pooled[i].to(device) for i in range(len(self.sites))], dim=1)
