"""How encode's speed depends on the padded-token budget (``max_tokens_per_batch``): the measurement behind the
CPU budget that ``max_tokens_per_batch="auto"`` picks.

Every budget is timed in interleaved rounds (so load from other processes spreads over all of them), under
the same generous row cap, on the benchmarks' long-tailed corpus; the fastest round of each is printed
relative to the best budget.

``--batch-costs`` times ``max_tokens_per_batch="auto"`` (the CPU budget, cut points chosen by the cheapest plan)
for each share of the budget taken as the fixed cost of a batch (``pipeline.AUTO_BATCH_COST_SHARE``), beside the
budgets, which fill each batch in turn: the measurement behind the share ``"auto"`` uses.

    python benchmarks/budget.py --threads 1
    python benchmarks/budget.py --budgets 1024,2048,4096 --rounds 5
    python benchmarks/budget.py --threads 1 --budgets 2048 --batch-costs 0,0.03125,0.0625,0.125,0.25 --rows 1024
"""

from __future__ import annotations

import _common as c


def main() -> int:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--budgets", default="512,1024,2048,4096,8192,16384,none",
                   help="comma-separated budgets to time; 'none' is no budget (default: %(default)s)")
    p.add_argument("--rows", type=int, default=256, help="row cap for every budget (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds of each budget (default: %(default)s)")
    p.add_argument("--batch-costs", default="",
                   help="comma-separated shares of the auto budget taken as the cost of a batch (default: none)")
    args = p.parse_args()
    s = c.setup(args)
    budgets: list = [None if b.strip().lower() == "none" else int(b) for b in args.budgets.split(",")]
    budgets += [f"auto@{float(x):g}" for x in args.batch_costs.split(",") if x.strip()]
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
            use(emb, budget)
            times[budget].append(c.timed(lambda: emb.encode(texts, show_progress_bar=False), s.device))
    best = min(min(v) for v in times.values())
    rows = []
    for budget in budgets:
        use(emb, budget)
        setting = emb.max_tokens_per_batch
        processed, batches = c.planned_tokens(lengths, args.rows, emb.engine.token_budget(setting),
                                              batch_cost=emb.engine.batch_cost(setting))
        rows.append([str(budget), batches, sum(lengths) / processed, min(times[budget]), c.median(times[budget]),
                     min(times[budget]) / best])
    c.emit(c.table(["budget", "batches", "real share", "seconds (min)", "(median)", "x best"], rows))
    fastest = min(budgets, key=lambda b: min(times[b]))
    c.emit(f"SUMMARY budget: fastest {fastest} padded tokens per batch (row cap {args.rows}); "
           + ", ".join(f"{b}: {min(times[b]) / best:.3f}" for b in budgets))
    c.emit_json({"benchmark": "budget", "rows": args.rows, "times": {str(b): v for b, v in times.items()}})
    return 0


def use(emb, budget) -> None:
    """Set ``budget`` on ``emb``: an integer or None as is; ``"auto@share"`` is ``"auto"`` planning with that share."""
    from moee_plugins.core import pipeline

    if isinstance(budget, str):
        pipeline.AUTO_BATCH_COST_SHARE = float(budget.split("@")[1])
        emb.max_tokens_per_batch = "auto"
    else:
        emb.max_tokens_per_batch = budget


if __name__ == "__main__":
    raise SystemExit(main())
