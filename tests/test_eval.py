"""``moee eval`` offline: in-memory tasks of every type on the tiny model, one forward per unique text,
exact fused similarity, label-free alpha, resume after interruption, mteb.mock_run, the CLI and summary.md."""

from __future__ import annotations

import json
from collections import Counter
from contextlib import contextmanager

import numpy as np
import pytest

mteb = pytest.importorskip("mteb")
threadpoolctl = pytest.importorskip("threadpoolctl")

import eval_tasks  # noqa: E402  (tests/ is on sys.path; registers the in-memory tasks)
from scipy.stats import spearmanr  # noqa: E402

from moee_plugins import MoEEmbedder  # noqa: E402
from moee_plugins.cli import main as cli_main  # noqa: E402
from moee_plugins.evaluation import (  # noqa: E402
    EvalReport,
    PartsStore,
    TaskRow,
    get_task,
    parse_alpha,
    parse_modes,
    run,
    select_alpha,
    sts_task,
)
from moee_plugins.evaluation import runner as runner_module  # noqa: E402
from moee_plugins.evaluation.alpha import DEFAULT_GRID  # noqa: E402
from moee_plugins.evaluation.mteb import MoEEMTEBModel  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore::sklearn.exceptions.UndefinedMetricWarning",  # tiny tasks: some labels are never predicted
    "ignore:To copy construct from a tensor:UserWarning",  # mteb's bitext evaluator re-wraps our torch scores
)

MODE_ROWS = ("| this run | HS |", "| this run | RW |", "| this run | MoEE (concat) |", "| this run | MoEE (sum) |")


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    """k-means / BLAS thread pools oversubscribe a 2-core machine shared with other test runs."""
    with threadpoolctl.threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def embedder(tiny_embedder):
    """A private embedder sharing the tiny model and the session's calibration (so no recalibration)."""
    return MoEEmbedder.from_config(tiny_embedder.config, model=tiny_embedder.model, tokenizer=tiny_embedder.tokenizer)


class ForwardLog:
    """Records the token ids of every row the embedder's forward pass runs; can fail on the n-th call."""

    def __init__(self, embedder: MoEEmbedder, fail_on_call: int | None = None) -> None:
        self.embedder, self.fail_on_call = embedder, fail_on_call
        self.rows: list[tuple[int, ...]] = []
        self.calls = 0

    @contextmanager
    def attached(self):
        def counting(forward_pass):  # the engine's public listener, called before each pass that runs
            self.calls += 1
            if self.fail_on_call is not None and self.calls == self.fail_on_call:
                raise KeyboardInterrupt("simulated interruption")
            self.rows.extend(tuple(r) for r in forward_pass.token_ids)

        with self.embedder.engine.observe(counting):
            yield self


def token_rows(embedder: MoEEmbedder, texts) -> set[tuple[int, ...]]:
    return {tuple(ids) for ids in embedder.tokenize(sorted(texts))}


@pytest.fixture(scope="module")
def full_run(embedder, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval-full")
    log = ForwardLog(embedder)
    with log.attached():
        report = run(embedder, tasks=eval_tasks.TASK_NAMES, modes="hs,rw,concat,sum", alpha="auto", output_dir=out)
    return out, report, log


def test_four_modes_come_from_one_forward_per_unique_text(full_run, embedder):
    _, report, log = full_run
    expected = eval_tasks.encoded_texts()
    counts = Counter(log.rows)
    assert set(counts) == token_rows(embedder, expected)  # every text the tasks encode, and nothing else
    assert max(counts.values()) == 1  # ... each through the model exactly once, for all four modes
    assert report.texts == {"unique": len(expected), "forwarded": len(expected)}
    for task in report.tasks:
        assert set(task.scores) == {"hs", "rw", "concat", "sum"}, task.errors
        assert all(np.isfinite(v) for v in task.scores.values())


def test_mteb_result_files_and_summary(full_run):
    out, report, _ = full_run
    from mteb.results import TaskResult

    for task in report.tasks:
        assert set(task.result_files) == {"hs", "rw", "concat", "sum"}
        for mode, relative in task.result_files.items():
            path = out / relative
            assert path.is_file() and f"mode_{mode}" in str(path.parent.name)
            result = TaskResult.from_disk(path)
            assert result.task_name == task.name
            assert result.get_score() == pytest.approx(task.main_scores[mode], abs=1e-6)
    summary = (out / "summary.md").read_text()
    assert "| Source | Mode | CLF | Clust | PairCLF | Rerank | STS | Summ | Avg |" in summary
    table = report.category_scores()
    for line_start, mode in zip(MODE_ROWS, ("hs", "rw", "concat", "sum"), strict=True):
        line = next(line for line in summary.splitlines() if line.startswith(line_start))
        cells = [c.strip() for c in line.strip("|").split("|")][2:]
        assert "n/a" not in cells  # every category ran
        assert [float(c) for c in cells] == pytest.approx([round(table[mode][c], 2) for c in
                                                           ("CLF", "Clust", "PairCLF", "Rerank", "STS", "Summ", "Avg")])
        row = table[mode]
        assert row["Avg"] == pytest.approx(np.mean([row[c] for c in ("CLF", "Clust", "PairCLF", "Rerank", "STS", "Summ")]))
    data = json.loads((out / "summary.json").read_text())
    assert data["categories"]["sum"]["STS"] == pytest.approx(table["sum"]["STS"])
    assert data["published"] is None  # the tiny model is not one the paper evaluated


def test_sum_mode_is_the_fused_score_in_mteb_own_columns(full_run):
    """sum vectors have constant norm, so MTEB's cosine/dot/euclidean columns rank pairs as cos(HS)+a cos(RW)."""
    out, report, _ = full_run
    rows = {t.name: t for t in report.tasks}
    sts = json.loads((out / rows["TinySTS"].result_files["sum"]).read_text())["scores"]["test"][0]
    assert sts["cosine_spearman"] == pytest.approx(sts["spearman"], abs=1e-6)
    assert sts["euclidean_spearman"] == pytest.approx(sts["spearman"], abs=1e-6)
    pairs = json.loads((out / rows["TinyParaphrasePairs"].result_files["sum"]).read_text())["scores"]["test"][0]
    assert pairs["cosine_ap"] == pytest.approx(pairs["similarity_ap"], abs=1e-6)
    assert pairs["dot_ap"] == pytest.approx(pairs["similarity_ap"], abs=1e-6)
    assert rows["TinyParaphrasePairs"].scores["sum"] == pytest.approx(pairs["similarity_ap"], abs=1e-6)


def test_sum_similarity_equals_hand_computed_fusion(embedder):
    texts = eval_tasks.SPORT[:3] + eval_tasks.FOOD[:3]
    alpha = 0.7
    parts = embedder.encode_parts(texts)
    stats = embedder.statistics
    z_hs = (parts.hidden - stats.hidden.mean) / (stats.hidden.std.astype(np.float64) + 1e-8)
    z_rw = (parts.routing - stats.routing.mean) / (stats.routing.std.astype(np.float64) + 1e-8)

    def cos(x):
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        return x @ x.T

    fused = (cos(z_hs) + alpha * cos(z_rw)) / (1 + alpha)  # the paper's score over a constant: same ranking
    model = MoEEMTEBModel(embedder, mode="sum", alpha=alpha)
    vectors = embedder.combine(parts, "sum", alpha=alpha)
    assert model.similarity(vectors, vectors).numpy() == pytest.approx(fused, abs=1e-5)
    import torch

    pairwise = model.similarity_pairwise(torch.from_numpy(vectors[:-1]), vectors[1:]).numpy()
    assert pairwise == pytest.approx(np.diag(fused, k=1), abs=1e-5)
    # k-means (clustering) and logistic regression (classification) see only these dot products:
    norms = np.linalg.norm(vectors, axis=1)
    assert norms == pytest.approx(1.0, abs=1e-5)
    squared = ((vectors[:, None, :] - vectors[None, :, :]) ** 2).sum(-1)
    assert squared == pytest.approx(2 - 2 * fused, abs=1e-4)
    hs = embedder.combine(parts, "hs")
    assert MoEEMTEBModel(embedder, mode="hs").similarity(hs, hs).numpy() == pytest.approx(cos(parts.hidden), abs=1e-5)
    assert model.mteb_model_meta.experiment_kwargs == {"mode": "sum", "prompt": "prompteol", "alpha": alpha}


def test_wrapper_encode_keeps_row_order_and_runs_each_text_once(embedder):
    texts = ["Row zero.", "Row one.", "Row zero.", "Row three, longer than the others."]
    model = MoEEMTEBModel(embedder, mode="concat")
    batches = [{"text": texts[:3]}, {"text": texts[3:]}]  # what an MTEB DataLoader yields
    log = ForwardLog(embedder)
    with log.attached():
        vectors = model.encode(batches, task_metadata=get_task("TinySTS").metadata, hf_split="test",
                               hf_subset="default")
        again = model.with_mode("rw").encode(batches, task_metadata=get_task("TinySTS").metadata,
                                             hf_split="test", hf_subset="default")
    assert len(log.rows) == 3  # the repeated text and the second mode cost nothing
    assert np.array_equal(vectors[0], vectors[2])
    reference = embedder.combine(embedder.encode_parts(texts), "concat")
    assert vectors == pytest.approx(reference, abs=1e-5)  # row i is text i
    assert again == pytest.approx(embedder.combine(embedder.encode_parts(texts), "rw"), abs=1e-5)
    assert model.encoded_tasks() == ["TinySTS"] and len(model.task_parts("TinySTS")) == 3


def test_auto_alpha_maximises_rank_agreement(full_run, embedder):
    out, report, _ = full_run
    texts = sorted(eval_tasks.encoded_texts(["TinySTS"]))
    choice = select_alpha(embedder, embedder.encode_parts(texts))
    assert report.alphas["TinySTS"]["alpha"] == pytest.approx(choice.alpha)  # chosen on the task's own texts
    # independent check of the criterion with scipy on all pairs
    vectors = embedder.combine(embedder.encode_parts(texts), "sum", alpha=1.0)
    u_hs, u_rw = vectors[:, : embedder.hidden_dim], vectors[:, embedder.hidden_dim :]
    i, j = np.triu_indices(len(texts), k=1)
    s_hs, s_rw = (u_hs[i] * u_hs[j]).sum(1), (u_rw[i] * u_rw[j]).sum(1)

    def agreement(a):
        fused = s_hs + a * s_rw
        return (spearmanr(fused, s_hs).statistic + spearmanr(fused, s_rw).statistic) / 2

    best = agreement(choice.alpha)
    assert best == pytest.approx(choice.agreement, abs=1e-9)
    assert all(best >= agreement(a) - 1e-9 for a in DEFAULT_GRID)
    assert best > agreement(DEFAULT_GRID[0]) and best > agreement(DEFAULT_GRID[-1])  # an interior optimum
    summary = (out / "summary.md").read_text()
    assert f"| TinySTS | {choice.alpha:g} |" in summary
    assert "alpha_auto__mode_sum" in report.tasks[0].result_files["sum"]


def test_rerun_resumes_without_model_or_mteb_work(full_run, embedder):
    out, report, _ = full_run
    log = ForwardLog(embedder)
    with log.attached():
        again = run(embedder, tasks=eval_tasks.TASK_NAMES, modes="hs,rw,concat,sum", alpha="auto", output_dir=out)
    assert log.rows == []
    for first, second in zip(report.tasks, again.tasks, strict=True):
        assert second.scores == pytest.approx(first.scores, abs=1e-6)
    assert again.alphas == report.alphas


def test_sum_alone_with_auto_alpha_collects_texts_and_shares_the_cache(full_run, embedder, tmp_path):
    out, report, _ = full_run
    log = ForwardLog(embedder)
    with log.attached():
        alone = run(embedder, tasks=["TinySTS"], modes="sum", alpha="auto", output_dir=tmp_path,
                    cache_dir=out / "parts-cache")
    assert log.rows == []  # another output folder, same parts cache: nothing to encode
    assert alone.alphas["TinySTS"]["alpha"] == report.alphas["TinySTS"]["alpha"]
    first = next(t for t in report.tasks if t.name == "TinySTS")
    assert alone.tasks[0].scores["sum"] == pytest.approx(first.scores["sum"], abs=1e-6)
    assert "| texts encoded | 20 unique: 0 through the model in this run, 20 from the parts cache |" in (
        tmp_path / "summary.md").read_text()


def test_interrupted_evaluation_resumes_from_the_parts_cache(embedder, tmp_path):
    names = ["TinySTS", "TinyParaphrasePairs"]
    expected = token_rows(embedder, eval_tasks.encoded_texts(names))
    first = ForwardLog(embedder, fail_on_call=3)  # shards of 4 texts: 2 shards done, the 3rd interrupted
    with first.attached(), pytest.raises(KeyboardInterrupt):
        run(embedder, tasks=names, modes="hs,sum", alpha=0.5, output_dir=tmp_path, shard_size=4)
    done = set(first.rows)
    assert len(done) == 8 and not (tmp_path / "summary.md").exists()
    second = ForwardLog(embedder)
    with second.attached():
        report = run(embedder, tasks=names, modes="hs,sum", alpha=0.5, output_dir=tmp_path, shard_size=4)
    resumed = Counter(second.rows)
    assert max(resumed.values()) == 1 and not (set(resumed) & done)  # nothing cached is encoded again
    assert set(resumed) | done == expected
    assert report.texts["forwarded"] == len(expected) - len(done)
    assert all(set(t.scores) == {"hs", "sum"} for t in report.tasks)
    assert (tmp_path / "summary.md").is_file()


def test_parts_store_keys_by_prompt_and_survives_reopening(embedder, tmp_path):
    texts = ["one text.", "two texts.", "one text."]
    store = PartsStore.for_embedder(embedder, tmp_path)
    parts = store.encode(embedder, texts, prompt="prompteol")
    assert store.forwarded == 2 and np.array_equal(parts.hidden[0], parts.hidden[2])
    reopened = PartsStore.for_embedder(embedder, tmp_path)
    again = reopened.encode(embedder, texts[:2], prompt="prompteol")
    assert reopened.forwarded == 0
    assert np.array_equal(again.hidden, parts.hidden[:2]) and np.array_equal(again.routing, parts.routing[:2])
    other = reopened.encode(embedder, texts[:2], prompt="none")
    assert reopened.forwarded == 2 and not np.allclose(other.hidden, again.hidden)
    with pytest.raises(ValueError, match="dimensions"):
        PartsStore(reopened.directory, hidden_dim=embedder.hidden_dim + 1, routing_dim=embedder.routing_dim)


def test_mock_run_passes(embedder):
    model = MoEEMTEBModel(embedder, mode="sum", alpha=0.5)
    results = mteb.mock_run(model)
    from mteb.results.task_result import TaskError

    failures = {name: status for name, status in results.items() if isinstance(status, TaskError)}
    assert results.all_passed, failures
    assert sum(status is not None for _, status in results.items()) >= 20  # every text mock task ran


def test_cli_eval_writes_summary_for_in_memory_tasks(tiny_alias, tmp_path, monkeypatch, capsys):
    sentences = runner_module.calibration_sentences()[:40]
    monkeypatch.setattr(runner_module, "calibration_sentences", lambda: sentences)  # keep calibration short
    code = cli_main(["eval", "--model", tiny_alias, "--task-module", eval_tasks.__file__,  # a .py file works too
                     "--tasks", "TinySTS,TinyTopicClustering", "--modes", "hs,sum", "--alpha", "0.5",
                     "--prompt", "prompteol", "-o", str(tmp_path / "out"), "--device", "cpu", "--no-progress"])
    assert code == 0
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| this run | HS |" in summary and "| this run | MoEE (sum) |" in summary
    assert "| TinySTS | STS |" in summary and "Fixed: alpha = 0.5" in summary
    assert f"wrote {tmp_path / 'out' / 'summary.md'}" in capsys.readouterr().out
    assert len(list((tmp_path / "out" / "results").rglob("TinySTS.json"))) == 2  # one per mode


@pytest.mark.parametrize(("args", "message"), [
    (["--tasks", "NoSuchTaskAnywhere"], "NoSuchTaskAnywhere"),
    (["--tasks", "TinySTS", "--alpha", "heavy"], "alpha"),
    (["--tasks", "TinySTS", "--modes", "hs,xx"], "modes"),
    (["--tasks", "TinySTS", "--task-module", "no_such_module_xyz"], "no_such_module_xyz"),
    (["--tasks", "TinySTS", "--task-module", "missing/tasks.py"], "missing/tasks.py"),
])
def test_cli_eval_rejects_bad_input(args, message, tmp_path, capsys):
    code = cli_main(["eval", "--model", "moee:olmoe", "-o", str(tmp_path), *args])  # fails before any loading
    assert code == 2
    assert message in capsys.readouterr().err


def test_published_figures_beside_ours_for_a_paper_model():
    rows = [TaskRow("STS12", "STS", "cosine_spearman", scores={"hs": 0.5, "sum": 0.6})]
    report = EvalReport(model="moee:olmoe", model_id="allenai/OLMoE-1B-7B-0924", name="moee/OLMoE-1B-7B-0924",
                        revision="r", prompt="prompteol", modes=["hs", "sum"], alpha=1.0, tasks=rows)
    text = report.to_markdown()
    # Table 4 of the paper (PromptEOL), every category, and Table 8-12's STS12 beside ours
    assert "| paper (OLMoE-1B-7B) | HS | 58.18 | 32.83 | 72.10 | 58.31 | 72.91 | 27.96 | 53.72 |" in text
    assert "| paper (OLMoE-1B-7B) | MoEE (sum) | 57.46 | 36.46 | 71.26 | 60.43 | 74.63 | 30.71 | 55.16 |" in text
    assert "| this run | MoEE (sum) | n/a | n/a | n/a | n/a | 60.00 | n/a | 60.00 |" in text
    published = report.to_dict()["published"]
    assert published["source"] == "arXiv:2410.10814"
    paper_hs, paper_sum = published["tasks"]["hs"]["STS12"], published["tasks"]["sum"]["STS12"]
    assert f"| STS12 | STS | `cosine_spearman` | 50.00 | 60.00 | {paper_hs:.2f} | {paper_sum:.2f} |" in text
    no_prompt = EvalReport(**{**report.__dict__, "prompt": "none"}).to_markdown()  # Table 3's figures
    assert "| paper (OLMoE-1B-7B) | MoEE (sum) | 48.54 | 30.67 | 50.93 | 47.77 | 49.45 | 28.77 | 42.69 |" in no_prompt
    custom = EvalReport(**{**report.__dict__, "prompt": "Q: {text}"}).to_markdown()
    assert "paper (" not in custom  # the paper evaluated only these two prompts
    other_model = EvalReport(**{**report.__dict__, "model": "x", "model_id": "someone/other-moe"}).to_markdown()
    assert "paper (" not in other_model


def test_options_and_tasks_are_validated():
    assert parse_modes("sum, hs") == ["hs", "sum"]
    assert parse_alpha("auto") == "auto" and parse_alpha("0.25") == 0.25
    for bad in ("", "hs,bogus"):
        with pytest.raises(ValueError, match="modes"):
            parse_modes(bad)
    for bad in ("-1", "nan", "inf", True):
        with pytest.raises(ValueError, match="alpha"):
            parse_alpha(bad)
    with pytest.raises(ValueError, match="equal lengths"):
        sts_task("Broken", ["a", "b"], ["c"], [1.0, 2.0])
    with pytest.raises(KeyError, match="NotATask"):
        get_task("NotATask")
    with pytest.raises(ValueError, match="exactly one"):
        run("moee:olmoe", tasks=["TinySTS"], benchmark="moee-paper")
    assert len(runner_module.PAPER_TASKS) == 19
