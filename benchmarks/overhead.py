"""Overhead of ``MoEEmbedder.encode`` (mode ``sum``) over the bare forward pass of the base model.

Bare = ``AutoModel`` forward over exactly ours' batches (same token ids, same length-sorted plan,
padded ahead of time, outside the clock): the physical limit. Ours = ``encode(texts)`` end to end:
tokenisation, batching, padding, router hooks, pooling on the device, one copy to the host per
batch, standardisation. Rounds alternate (bare, ours), (ours, bare), ... and the fastest rounds are
compared: other processes can only add time, so the minimum is the best estimate of each cost (the
medians are printed too). Target: ours / bare <= 1.05.

``--defaults`` adds a third candidate in the same rounds: ``MoEEmbedder(model, tokenizer, mode="sum")`` with
the library's own defaults (``max_tokens_per_batch="auto"``, the default row cap; only ``max_length`` is
set, so that it sees the same tokens), against the same bare pass over the tuned batches.

    python benchmarks/overhead.py                                   # CPU, small OLMoE-like shape
    python benchmarks/overhead.py --device cuda --shape olmoe-1b-7b # GPU, full OLMoE-1B-7B shape, bf16
    python benchmarks/overhead.py --threads 1 --defaults            # and the library defaults beside it
"""

from __future__ import annotations

import _common as c


def main() -> int:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5, help="timed rounds of each (default: %(default)s)")
    p.add_argument("--defaults", action="store_true", help="also time ours with the library's defaults")
    args = p.parse_args()
    s = c.setup(args)
    c.emit(c.describe(s))
    c.emit(f"ours/bare batching: {s.batch_size} rows, {s.max_tokens_per_batch} padded tokens per batch")

    model = c.build_model(s)
    tokenizer = c.build_tokenizer(model.config.vocab_size)
    texts = c.make_corpus(s.corpus, model.config.vocab_size, s.seed)
    emb = c.embedder(model, tokenizer, s, texts)
    body = emb.model
    batches = c.bare_batches(emb, texts)
    real = sum(int(mask.sum()) for _, mask, _ in batches)
    processed = sum(mask.numel() for _, mask, _ in batches)

    candidates = {
        "bare": lambda: c.run_bare(body, batches, s.device),
        "ours": lambda: emb.encode(texts, show_progress_bar=False),
    }
    if args.defaults:
        defaults = c.default_embedder(model, tokenizer, s, texts)
        candidates["defaults"] = lambda: defaults.encode(texts, show_progress_bar=False)
        defaults.encode(texts[:8], show_progress_bar=False)
        d_lengths = [len(row) for row in defaults.tokenize(texts)]
        setting = defaults.max_tokens_per_batch
        d_processed, d_batches = c.planned_tokens(d_lengths, defaults.batch_size, defaults.engine.token_budget(setting),
                                                 batch_cost=defaults.engine.batch_cost(setting))
        c.emit(f"defaults: row cap {defaults.batch_size}, max_tokens_per_batch={setting!r} "
               f"-> {defaults.engine.token_budget(setting)} padded tokens; {d_batches} batches, {d_processed:,} processed tokens")

    c.run_bare(body, batches[:2], s.device)  # warm-up: kernels, allocator
    emb.encode(texts[:8], show_progress_bar=False)
    times: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(c.timed(candidates[name], s.device))
    tokenize = min(c.timed(lambda: emb.tokenize(texts), s.device) for _ in range(args.rounds))

    bare_t, ours_t = min(times["bare"]), min(times["ours"])
    n = len(texts)

    def row(label: str, values: list[float]) -> list:
        best = min(values)
        return [label, best, c.median(values), n / best, real / best, " ".join(f"{t:.2f}" for t in values)]

    rows = [row("bare forward (the limit)", times["bare"]), row("ours: encode(), sum mode, tuned", times["ours"])]
    if "defaults" in times:
        rows.append(row("ours: encode(), sum mode, library defaults", times["defaults"]))
    rows.append(["  of which tokenisation", tokenize, "", n / tokenize, real / tokenize, ""])
    c.emit(c.table(["", "seconds (min)", "(median)", "documents/s", "tokens/s", "every round"], rows))
    c.emit(f"{n} documents, {real:,} real tokens, {processed:,} processed ({real / processed:.1%} real), "
           f"{len(batches)} batches")
    ratio = ours_t / bare_t
    ratio_median = c.median(times["ours"]) / c.median(times["bare"])
    c.emit(f"SUMMARY overhead: ours / bare = {ratio:.3f} (target <= 1.05: {'met' if ratio <= 1.05 else 'NOT met'}; "
           f"medians: {ratio_median:.3f}); ours {n / ours_t:,.1f} documents/s, {real / ours_t:,.0f} tokens/s")
    extra = {}
    if "defaults" in times:
        d_ratio = min(times["defaults"]) / bare_t
        d_median = c.median(times["defaults"]) / c.median(times["bare"])
        c.emit(f"SUMMARY overhead --defaults: ours with library defaults / bare = {d_ratio:.3f} (target <= 1.05: "
               f"{'met' if d_ratio <= 1.05 else 'NOT met'}; medians: {d_median:.3f}); tuned: {ratio:.3f}")
        extra = {"defaults_ratio": d_ratio, "defaults_ratio_medians": d_median, "defaults_s": times["defaults"]}
    c.emit_json({"benchmark": "overhead", "ratio": ratio, "ratio_medians": ratio_median, "bare_s": times["bare"],
                 "ours_s": times["ours"], "tokenize_s": tokenize, "docs": n, "real_tokens": real,
                 "processed_tokens": processed, **extra})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
