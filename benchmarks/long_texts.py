"""Long documents: ``long_texts="chunk"`` vs the default truncation, side by side on one model.

One document of --tokens words (one word = one token) is embedded with max_length --max-length both ways, in
interleaved rounds (medians): the vector each way, how far apart they are, whether the document's end now
changes its vector, and the cost (time ratio vs the number of windows). Then the windows' tokenisation alone,
at two document sizes, to show it grows linearly with the text (it is done in character slices).

    python benchmarks/long_texts.py --threads 1                  # CPU, the olmoe-cpu shape
    python benchmarks/long_texts.py --device cuda --shape olmoe-1b-7b
"""

from __future__ import annotations

import time

import _common as c
import numpy as np
import torch


def main() -> int:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=5000, help="words (= tokens) of the long document")
    p.add_argument("--max-length", type=int, default=512, help="max_length, prompt included (default: %(default)s)")
    p.add_argument("--overlap", type=int, default=0, help="chunk_overlap (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    s = c.setup(args)
    from moee_plugins import MoEEmbedder
    from moee_plugins.core.chunking import text_windows

    vocab = c.SHAPES[s.shape]["vocab_size"]
    tokenizer = c.build_tokenizer(vocab)
    model = c.build_model(s)
    body = model.model
    rng = np.random.default_rng(s.seed)
    words = rng.integers(0, c.word_count(vocab), size=args.tokens + 40)
    document = " ".join(f"w{i}" for i in words[: args.tokens]) + "."
    other_end = " ".join(f"w{i}" for i in words[: args.tokens - 40]) + " " + " ".join(
        f"w{i}" for i in words[args.tokens :]) + "."  # same start, a different last 40 tokens
    calibration = c.make_corpus(c.CorpusSpec(64, 60, 0.5, 10, 200), vocab, s.seed)
    truncate = MoEEmbedder(body, tokenizer, device=s.device, dtype=s.dtype, max_length=args.max_length)
    truncate.calibrate(calibration, show_progress_bar=False)
    chunk = MoEEmbedder.from_config(truncate.config, model=body, tokenizer=tokenizer, device=s.device,
                                    long_texts="chunk", chunk_overlap=args.overlap)
    c.emit(c.describe(s).split(" | ")[0] + f" | shape {s.shape} ({str(s.dtype).removeprefix('torch.')}) | document of "
           f"{args.tokens:,} tokens, max_length {args.max_length}, overlap {args.overlap}")

    vectors, times, tokens = {}, {"truncate": [], "chunk": []}, {}
    for _ in range(args.rounds):  # interleaved rounds
        for name, emb in (("truncate", truncate), ("chunk", chunk)):
            parts = None

            def run(emb=emb):
                nonlocal parts
                parts = emb.encode_parts([document], show_progress_bar=False)

            times[name].append(c.timed(run, s.device))
            vectors[name] = emb.combine(parts)[0]
            tokens[name] = int(parts.num_tokens[0])
    windows = len(next(text_windows(tokenizer, chunk.prompt, [document], args.max_length, args.overlap))[1])
    ends = {name: emb.encode([document, other_end], show_progress_bar=False) for name, emb in
            (("truncate", truncate), ("chunk", chunk))}
    rows = []
    for name in ("truncate", "chunk"):
        end_change = float(np.linalg.norm(ends[name][0] - ends[name][1]))
        rows.append([name, tokens[name], c.median(times[name]), end_change])
    cosine = float(truncate.similarity(vectors["truncate"][None], vectors["chunk"][None])[0, 0])
    c.emit(c.table(["long_texts", "tokens run", "median s", "L2 change from the last 40 tokens"], rows))
    ratio = c.median(times["chunk"]) / c.median(times["truncate"])
    c.emit(f"windows: {windows}; similarity(truncated vector, chunked vector) = {cosine:.3f}")

    scaling = []
    for size in (args.tokens, 10 * args.tokens):
        text = " ".join(f"w{i}" for i in rng.integers(0, c.word_count(vocab), size=size)) + "."
        started = time.perf_counter()
        count = len(next(text_windows(tokenizer, chunk.prompt, [text], args.max_length, args.overlap))[1])
        scaling.append([size, count, time.perf_counter() - started])
    c.emit(c.table(["document tokens", "windows", "tokenisation s"], scaling))
    per_token = [seconds / size for size, _, seconds in scaling]
    c.emit(f"SUMMARY chunk/truncate time = {ratio:.2f} for {windows} windows (target: about the window count, "
           f"{windows}); tokenisation per token x10 document = {per_token[1] / per_token[0]:.2f} (target ~1: linear)")
    c.emit_json({"windows": windows, "tokens": tokens, "times": times, "ratio": ratio, "cosine": cosine,
                 "end_change": {r[0]: r[3] for r in rows}, "tokenisation": scaling,
                 "device": str(s.device), "shape": s.shape, "torch": torch.__version__})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
