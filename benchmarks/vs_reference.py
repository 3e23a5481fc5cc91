"""Ours vs the paper code's way of working, on a long-tailed corpus, side by side in one run.

The reference way (the published ``MOEE.encode``): fixed batches of 32 in input order, left-padded to
the longest prompt of the batch, a ``*ForCausalLM`` forward with ``output_hidden_states=True`` (and
router logits), so the vocabulary head runs on every position; last-token pooling, per-batch
z-scoring. Ours: ``MoEEmbedder.encode`` in ``sum`` mode (length-sorted batches under a row cap and a
token budget, base model only, pooling on the device). Also shown, to separate the causes: the same
fixed batches through the base model only (padding without the head), and the bare sorted forward.
Both ways see exactly the same real tokens (no truncation). Target: ours >= 5x faster.
``--defaults`` also runs ours with the library's own defaults (nothing tuned but ``max_length``) beside it.

    python benchmarks/vs_reference.py                                   # CPU, small OLMoE-like shape
    python benchmarks/vs_reference.py --device cuda --shape olmoe-1b-7b # GPU, full OLMoE-1B-7B shape, bf16
"""

from __future__ import annotations

import _common as c


def main() -> int:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--skip-head-free", action="store_true", help="do not run the reference without its LM head")
    p.add_argument("--defaults", action="store_true", help="also run ours with the library's defaults")
    args = p.parse_args()
    s = c.setup(args)
    c.emit(c.describe(s))
    c.emit(f"ours: {s.batch_size} rows, {s.max_tokens_per_batch} padded tokens per batch; "
           f"reference: fixed batches of {s.ref_batch_size} in input order")

    model = c.build_model(s)
    tokenizer = c.build_tokenizer(model.config.vocab_size)
    texts = c.make_corpus(s.corpus, model.config.vocab_size, s.seed)
    emb = c.embedder(model, tokenizer, s, texts)
    batches = c.bare_batches(emb, texts)
    real = sum(int(mask.sum()) for _, mask, _ in batches)
    ours_processed = sum(mask.numel() for _, mask, _ in batches)

    defaults = c.default_embedder(model, tokenizer, s, texts) if args.defaults else None
    # warm-up of every path on a few documents
    emb.encode(texts[:8], show_progress_bar=False)
    if defaults is not None:
        defaults.encode(texts[:8], show_progress_bar=False)
    c.run_bare(emb.model, batches[-1:], s.device)
    c.run_reference(model, tokenizer, texts[:4], s.ref_batch_size, s.device)

    counts: dict[str, dict[str, int]] = {}

    def reference(lm_head: bool):
        def run() -> None:
            counts["head" if lm_head else "no head"] = c.run_reference(model, tokenizer, texts, s.ref_batch_size,
                                                                       s.device, lm_head=lm_head)
        return run

    seconds = {
        "ours": c.timed(lambda: emb.encode(texts, show_progress_bar=False), s.device),
        "bare": c.timed(lambda: c.run_bare(emb.model, batches, s.device), s.device),
    }
    defaults_processed = 0
    if defaults is not None:
        seconds["defaults"] = c.timed(lambda: defaults.encode(texts, show_progress_bar=False), s.device)
        d_lengths = [len(row) for row in defaults.tokenize(texts)]
        setting = defaults.max_tokens_per_batch
        defaults_processed = c.planned_tokens(d_lengths, defaults.batch_size, defaults.engine.token_budget(setting),
                                              batch_cost=defaults.engine.batch_cost(setting))[0]
    if not args.skip_head_free:
        seconds["no head"] = c.timed(reference(False), s.device)
    seconds["head"] = c.timed(reference(True), s.device)
    if counts["head"]["real"] != real:
        c.emit(f"WARNING: the reference saw {counts['head']['real']:,} real tokens, ours {real:,}")

    n = len(texts)
    ref_processed = counts["head"]["processed"]
    labels = {
        "head": "reference: CausalLM, all hidden states, fixed batches",
        "no head": "  same fixed batches, base model only",
        "bare": "bare forward, ours' sorted batches",
        "ours": "ours: encode(), sum mode, tuned",
        "defaults": "ours: encode(), sum mode, library defaults",
    }
    rows = []
    for key in ("head", "no head", "bare", "ours", "defaults"):
        if key not in seconds:
            continue
        processed = {"ours": ours_processed, "bare": ours_processed, "defaults": defaults_processed}.get(key, ref_processed)
        t = seconds[key]
        rows.append([labels[key], processed, real / processed, t, n / t, real / t, seconds["head"] / t])
    c.emit(c.table(["", "processed tokens", "real share", "seconds", "documents/s", "tokens/s", "x faster than ref"],
                   rows))
    speedup = seconds["head"] / seconds["ours"]
    line = (f"SUMMARY vs_reference: ours is {speedup:.1f}x faster than the reference way "
            f"(target >= 5x: {'met' if speedup >= 5 else 'NOT met'})")
    if "no head" in seconds:
        line += f"; without its LM head (padding alone) the reference is {seconds['no head'] / seconds['ours']:.1f}x ours"
    c.emit(line + f"; reference {real / ref_processed:.0%} real tokens, ours {real / ours_processed:.0%}")
    if "defaults" in seconds:
        d_speedup = seconds["head"] / seconds["defaults"]
        c.emit(f"SUMMARY vs_reference --defaults: ours with library defaults is {d_speedup:.1f}x faster than the "
               f"reference way (tuned: {speedup:.1f}x); defaults / bare = {seconds['defaults'] / seconds['bare']:.3f}")
    c.emit_json({"benchmark": "vs_reference", "speedup": speedup, "seconds": seconds, "docs": n, "real_tokens": real,
                 "ours_processed": ours_processed, "reference_processed": ref_processed})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
