"""How encode's speed depends on the padded-token budget (``max_tokens_per_batch``): the measurement behind the
CPU budget that ``max_tokens_per_batch="auto"`` picks.

Every budget is timed in interleaved rounds (so load from other processes spreads over all of them), under
the same generous row cap, on the benchmarks' long-tailed corpus; the fastest round of each is printed
relative to the best budget.

    python benchmarks/budget.py --threads 1
    python benchmarks/budget.py --budgets 1024,2048,4096 --rounds 5
"""

from __future__ import annotations

import _common as c


def main() -> int:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--budgets", default="512,1024,2048,4096,8192,16384,none",
                   help="comma-separated budgets to time; 'none' is no budget (default: %(default)s)")
    p.add_argument("--rows", type=int, default=256, help="row cap for every budget (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds of each budget (default: %(default)s)")
    args = p.parse_args()
    s = c.setup(args)
    budgets = [None if b.strip().lower() == "none" else int(b) for b in args.budgets.split(",")]
    c.emit(c.describe(s))
    model = c.build_model(s)
    tokenizer = c.build_tokenizer(model.config.vocab_size)
    texts = c.make_corpus(s.corpus, model.config.vocab_size, s.seed)
    emb = c.embedder(model, tokenizer, s, texts)
    emb.batch_size = args.rows
    lengths = [len(row) for row in emb.tokenize(texts)]
    emb.encode(texts[:8], show_progress_bar=False)  # warm-up
    times: dict[int | None, list[float]] = {b: [] for b in budgets}
    for r in range(args.rounds):
        for budget in budgets if r % 2 == 0 else budgets[::-1]:
            emb.max_tokens_per_batch = budget
            times[budget].append(c.timed(lambda: emb.encode(texts, show_progress_bar=False), s.device))
    best = min(min(v) for v in times.values())
    rows = []
    for budget in budgets:
        processed, batches = c.planned_tokens(lengths, args.rows, budget)
        rows.append([str(budget), batches, sum(lengths) / processed, min(times[budget]), c.median(times[budget]),
                     min(times[budget]) / best])
    c.emit(c.table(["budget", "batches", "real share", "seconds (min)", "(median)", "x best"], rows))
    fastest = min(budgets, key=lambda b: min(times[b]))
    c.emit(f"SUMMARY budget: fastest {fastest} padded tokens per batch (row cap {args.rows}); "
           + ", ".join(f"{b}: {min(times[b]) / best:.3f}" for b in budgets))
    c.emit_json({"benchmark": "budget", "rows": args.rows, "times": {str(b): v for b, v in times.items()}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
