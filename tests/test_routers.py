"""Routers without transformers' recording metadata (remote code) are found by shape and captured from input."""

from __future__ import annotations

import torch
from torch import nn

from moee_plugins.core.routers import RoutingCapture, find_router_sites, select_sites


class MoEGate(nn.Module):
    """Like DeepSeekMoE's remote-code gate: computes logits internally and returns only top-k choices."""

    def __init__(self, hidden: int, experts: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(experts, hidden))

    def forward(self, x):
        scores = torch.softmax(x.reshape(-1, x.shape[-1]) @ self.weight.T, dim=-1)
        return torch.topk(scores, 2, dim=-1)


class Block(nn.Module):
    def __init__(self, hidden: int, experts: int | None) -> None:
        super().__init__()
        self.gate = MoEGate(hidden, experts) if experts else None
        self.shared_expert_gate = nn.Linear(hidden, 1, bias=False)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x):
        if self.gate is not None:
            self.gate(x)
        return self.proj(x) + torch.sigmoid(self.shared_expert_gate(x)) * x


class RemoteLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.config = type("Config", (), {"n_routed_experts": 6, "model_type": "deepseek", "scoring_func": "softmax"})()
        self.layers = nn.ModuleList([Block(8, None), Block(8, 6), Block(8, 6)])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def test_fallback_finds_remote_code_gates_and_skips_dense_layers_and_shared_gates():
    model = RemoteLike()
    sites = find_router_sites(model)
    assert [(s.name, s.layer, s.num_experts) for s in sites] == [("layers.1.gate", 1, 6), ("layers.2.gate", 2, 6)]
    assert select_sites(sites, [2])[0].name == "layers.2.gate"


def test_fallback_capture_recomputes_logits_from_the_router_input():
    torch.manual_seed(0)
    model = RemoteLike()
    sites = find_router_sites(model)
    x = torch.randn(2, 5, 8)
    mask = torch.ones(2, 5, dtype=torch.long)
    capture = RoutingCapture(sites, pooling="last", routing="logits")
    with capture.attached(), torch.inference_mode():
        capture.start_batch(mask)
        model(x)
        got = capture.collect(torch.device("cpu"))
    with torch.inference_mode():
        h1 = model.layers[0](x)
        expected_first = h1[:, -1] @ model.layers[1].gate.weight.T
    torch.testing.assert_close(got[:, :6], expected_first, atol=1e-5, rtol=1e-5)
    assert got.shape == (2, 12)
    assert not model.layers[1].gate._forward_hooks, "hooks must be removed after the block"


class SharedScoringRouter(nn.Module):
    """Like Inkling's router: its weight also scores the shared experts, but it returns only the routed logits."""

    def __init__(self, hidden: int, routed: int, shared: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(routed + shared, hidden))
        self.shared = shared

    def forward(self, x):
        logits = x.reshape(-1, x.shape[-1]) @ self.weight.T
        return logits[:, : -self.shared], logits[:, -self.shared :]


class SharedScoringModel(nn.Module):
    _can_record_outputs = {"router_logits": SharedScoringRouter}  # transformers reads output 1: we say index 0 below

    def __init__(self) -> None:
        super().__init__()
        self.config = type("Config", (), {"model_type": "toy"})()
        self.embed = nn.Embedding(10, 8)
        self.layers = nn.ModuleList([nn.ModuleDict({"gate": SharedScoringRouter(8, 6, 2)}) for _ in range(2)])

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids, **_):
        x = self.embed(input_ids)
        for layer in self.layers:
            layer["gate"](x)
        return (x,)


def test_routers_are_sized_from_the_logits_they_return_not_their_weight_rows():
    from moee_plugins.core import routers

    model = SharedScoringModel()
    sites = [routers.RouterSite(s.name, s.layer, s.num_experts, s.scoring, s.module, routers._output_index_extractor(0))
             for s in find_router_sites(model)]
    assert [s.num_experts for s in sites] == [8, 8]  # weight rows: routed + shared
    sized = routers.sized_from_logits(model, sites)
    assert [s.num_experts for s in sized] == [6, 6]
    assert not any(s.module._forward_hooks for s in sized), "probe hooks must be removed"
    capture = RoutingCapture(sized, pooling="last", routing="logits")
    ids = torch.randint(0, 10, (3, 4))
    with capture.attached(), torch.inference_mode():
        capture.start_batch(torch.ones_like(ids))
        model(ids)
        assert capture.collect(torch.device("cpu")).shape == (3, 12)
