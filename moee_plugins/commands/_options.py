"""Options shared by every sub-command, so ``moee embed``, ``topics``, ``calibrate``, ``serve`` and ``eval`` accept
the same flags, check them the same way and build their embedder the same way."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import UsageError


def add_model_options(parser: argparse.ArgumentParser, *, model_required: bool = False, mode: bool = True) -> None:
    """``--model``, ``--prompt`` (and ``--mode``), then a group of loading and batching options."""
    from ..core import MODES
    from ..core.loading import QUANTIZATIONS
    from ..core.routers import ROUTING_KINDS

    if model_required:
        parser.add_argument("--model", required=True, help="moee:<alias>, a hub id or a local model directory")
    else:
        parser.add_argument("--model", default="moee:olmoe",
                            help="moee:<alias>, a hub id or a local model directory (default: %(default)s)")
    if mode:
        parser.add_argument("--mode", choices=MODES, default="sum", help="MoEE embedding mode (default: %(default)s)")
    parser.add_argument("--prompt", default="prompteol",
                        help="prompt preset (prompteol, none, raw) or a template with {text} (default: %(default)s)")
    group = parser.add_argument_group("model options")
    group.add_argument("--routing", choices=ROUTING_KINDS, default=None,
                       help="router logits or the model's own expert probabilities (default: the alias's, else logits)")
    group.add_argument("--layers", default=None, help="comma-separated decoder layers whose routers to use (default: all)")
    group.add_argument("--hidden-layer", type=int, default=-1,
                       help="decoder layer whose hidden state is HS: -1 the last (after the final norm), negative "
                       "counts from the end (default: %(default)s)")
    group.add_argument("--batch-size", type=int, default=None,
                       help="most documents per forward pass (default: the library's, 1024)")
    group.add_argument("--max-tokens-per-batch", type=int, default=None,
                       help="most padded tokens (rows x longest) per forward pass (default: chosen for the device)")
    group.add_argument("--max-length", type=int, default=512,
                       help="tokens per document, prompt included; longer ones are cut inside the prompt "
                       "(default: %(default)s)")
    group.add_argument("--long-texts", choices=("truncate", "chunk"), default="truncate",
                       help="a document over --max-length: cut inside the prompt (truncate), or split into windows "
                       "whose raw parts are pooled into its one vector (chunk) (default: %(default)s)")
    group.add_argument("--chunk-overlap", type=int, default=0,
                       help="tokens each window repeats from the previous one with --long-texts chunk (default: %(default)s)")
    group.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: CUDA when present)")
    group.add_argument("--dtype", default="auto", help="auto (bfloat16 on CUDA, else float32), float32, bfloat16, float16")
    group.add_argument("--device-map", default=None,
                       help="spread a model too large for one GPU over several: 'auto' (needs accelerate)")
    group.add_argument("--quantization", choices=QUANTIZATIONS, default=None,
                       help="load the model in 4 or 8 bits (CUDA, bitsandbytes); routers stay in full precision")
    group.add_argument("--experts-implementation", default=None,
                       help="expert kernels: eager, batched_mm, grouped_mm, ... (default: transformers' choice; "
                       "checked against what the model offers)")
    group.add_argument("--attn-implementation", default=None,
                       help="attention kernels: eager, sdpa, flex_attention, ... (default: transformers' choice)")
    group.add_argument("--trust-remote-code", action="store_true",
                       help="run a checkpoint's own modelling code (e.g. moee:deepseek-moe)")


def embedder_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``MoEEmbedder`` keyword arguments (besides the model) from :func:`add_model_options`' flags.

    Raises ``ValueError`` on a malformed ``--layers``.
    """
    from ..core.pipeline import AUTO, DEFAULT_ROW_CAP

    layers = None
    if args.layers:
        try:
            layers = [int(x) for x in args.layers.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"--layers must be comma-separated integers, got {args.layers!r}") from None
    kwargs: dict[str, Any] = {
        "prompt": args.prompt, "routing": args.routing, "layers": layers, "hidden_layer": args.hidden_layer,
        "batch_size": args.batch_size or DEFAULT_ROW_CAP,
        "max_tokens_per_batch": AUTO if args.max_tokens_per_batch is None else args.max_tokens_per_batch,
        "max_length": args.max_length, "device": args.device,
        "long_texts": args.long_texts, "chunk_overlap": args.chunk_overlap,
        "dtype": args.dtype, "quantization": args.quantization, "trust_remote_code": args.trust_remote_code,
        "model_kwargs": {"device_map": args.device_map} if args.device_map else None,
        "experts_implementation": getattr(args, "experts_implementation", None),
        "attn_implementation": getattr(args, "attn_implementation", None),
    }
    if getattr(args, "mode", None) is not None:
        kwargs["mode"] = args.mode
    return kwargs


def parse_sizes(value: str, flag: str) -> list[int]:
    """Comma-separated positive integers (``256,512``), refused with the flag's name otherwise."""
    try:
        sizes = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{flag} must be comma-separated positive integers, got {value!r}") from None
    if not sizes or min(sizes) < 1:
        raise UsageError(f"{flag} must be comma-separated positive integers, got {value!r}")
    return sizes


def add_text_options(parser: argparse.ArgumentParser, *, corpus_input: type | None = None) -> None:
    """``--text-field`` / ``--text-column``: where a corpus file holds its text; with ``corpus_input`` (the
    argument's type) also the positional ``input`` corpus file."""
    if corpus_input is not None:
        parser.add_argument("input", type=corpus_input,
                            help="corpus: .txt (one document a line), .jsonl (--text-field), .csv/.parquet (--text-column)")
    parser.add_argument("--text-field", default="text", help="jsonl field holding the text (default: %(default)s)")
    parser.add_argument("--text-column", default=None, help="csv/parquet column holding the text (default: --text-field)")


def check_positive(args: argparse.Namespace, *names: str) -> None:
    """Refuse a flag below 1 (``--batch-size 0``); a flag not given (None) is left to its default."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")


def load_embedder(args: argparse.Namespace) -> Any:
    """The embedder :func:`add_model_options`' flags describe (loads the model); a bad model, alias, prompt or
    dtype is the user's error."""
    from ..core.build import build_embedder

    try:
        return build_embedder(args.model, owner="moee", **embedder_kwargs(args))
    except (OSError, ValueError, TypeError, ImportError) as exc:
        raise UsageError(f"cannot load model {args.model!r}: {exc}") from exc
