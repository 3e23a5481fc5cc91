"""Share of real tokens among processed tokens: ours' length-sorted batching vs fixed-size batches.

Exact counts, no model run: documents are tokenised with the PromptEOL prompt as ``encode`` does, then
batched (a) the paper code's way, fixed batches in input order, each padded to its longest row, and
(b) ours, sorted by length, under a row cap and optionally a padded-token budget (the library defaults
planned chunk by chunk, as ``encode`` does). Shown on a corpus
the size of 20 Newsgroups (18,846 documents) and on the smaller corpus the timed CPU benchmarks use.
Target: ours >= 90% real tokens.

    python benchmarks/padding.py
"""

from __future__ import annotations

import _common as c

OLD_DEFAULT = ("ours, 32 rows, no budget (the defaults before 'auto')", 32, None)
DEFAULT = ("ours, library defaults on a CPU (1,024 rows, 'auto' = 2,048 tokens, cheapest cuts, chunked)", 1024, 2048)
CUDA = ("ours, GPU benchmarks ({} rows, {:,} tokens)".format(*c.OURS_BATCHING["cuda"]), *c.OURS_BATCHING["cuda"])
CPU = ("ours, CPU benchmarks ({} rows, {:,} tokens)".format(*c.OURS_BATCHING["cpu"]), *c.OURS_BATCHING["cpu"])


def main() -> int:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--full-docs", type=int, default=18846, help="documents of the full-size corpus (default: 20NG's)")
    args = p.parse_args()
    s = c.setup(args)
    from moee_plugins.core.batching import tokenize
    from moee_plugins.core.pipeline import auto_batch_cost
    from moee_plugins.core.prompts import resolve_prompt

    vocab = c.SHAPES[s.shape]["vocab_size"]
    tokenizer = c.build_tokenizer(vocab)
    corpora = [  # (name, corpus, settings to show, the setting the summary judges)
        ("20NG-size corpus", c.CorpusSpec(args.full_docs, **_law(c.CORPORA["cuda"])), [OLD_DEFAULT, DEFAULT, CUDA, CPU],
         DEFAULT),
        ("CPU benchmarks' corpus", c.CORPORA["cpu"], [OLD_DEFAULT, DEFAULT, CPU], DEFAULT),
    ]
    c.emit(f"batch of the reference: {s.ref_batch_size} rows, input order; prompt: PromptEOL; vocabulary {vocab:,}")
    summary = []
    for name, spec, settings, judged in corpora:
        texts = c.make_corpus(spec, vocab, s.seed)
        lengths = [len(ids) for ids in tokenize(tokenizer, resolve_prompt("prompteol"), texts, spec.max_words + 64)]
        real = sum(lengths)
        fixed = c.fixed_batches_tokens(lengths, s.ref_batch_size)
        rows = [[f"reference: fixed batches of {s.ref_batch_size}", fixed, real / fixed,
                 -(-len(lengths) // s.ref_batch_size), 1.0]]
        share = {}
        for label, batch_rows, budget in settings:
            chunked = texts if label == DEFAULT[0] else None
            cost = auto_batch_cost(budget) if label == DEFAULT[0] else None
            processed, batches = c.planned_tokens(lengths, batch_rows, budget, chunked, batch_cost=cost)
            share[label] = real / processed
            rows.append([label, processed, real / processed, batches, fixed / processed])
        c.emit(f"\n{name}: {len(texts):,} documents, {real:,} real tokens, lengths {min(lengths)}-{max(lengths)} "
               f"(median {sorted(lengths)[len(lengths) // 2]})")
        c.emit(c.table(["batching", "processed tokens", "real share", "batches", "x fewer tokens than ref"], rows))
        ours = share[judged[0]]
        summary.append(f"{name}, {judged[0].removeprefix('ours, ')}: ours {ours:.1%} real vs reference "
                       f"{real / fixed:.1%} (target >= 90%: {'met' if ours >= 0.9 else 'NOT met'})")
    c.emit("\nSUMMARY padding: " + "; ".join(summary))
    return 0


def _law(spec: c.CorpusSpec) -> dict:
    return {"median_words": spec.median_words, "sigma": spec.sigma, "min_words": spec.min_words,
            "max_words": spec.max_words}


if __name__ == "__main__":
    raise SystemExit(main())
