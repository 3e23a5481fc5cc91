"""Run MTEB tasks in every MoEE mode from one forward pass per unique text, resumably, and write the summary."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .._extras import require
from ..core.build import build_embedder
from ..core.combine import MODES
from ..core.embedder import MoEEmbedder
from ..core.prompts import PromptTemplate, prompt_to_config, resolve_prompt
from ..core.standardize import Statistics, calibration_sentences
from .alpha import select_alpha
from .cache import PartsStore
from .summary import EvalReport, TaskRow, score_key, task_score
from .tasks import get_task

logger = logging.getLogger(__name__)

# the paper's MTEB task list (Li & Zhou, ICLR 2025), under MTEB's task names
PAPER_TASKS: tuple[str, ...] = (
    "TweetSentimentExtractionClassification", "EmotionClassification", "ToxicConversationsClassification",
    "TwentyNewsgroupsClustering", "MedrxivClusteringS2S",
    "TwitterURLCorpus", "TwitterSemEval2015",
    "AskUbuntuDupQuestions", "SciDocsRR", "StackOverflowDupQuestions",
    "STS12", "STS13", "STS14", "STS15", "STS16", "BIOSSES", "SICK-R", "STSBenchmark",
    "SummEval",
)
BENCHMARKS: dict[str, tuple[str, ...]] = {"moee-paper": PAPER_TASKS}


def parse_modes(modes: str | Sequence[str]) -> list[str]:
    """``"hs,rw,concat,sum"`` or a sequence -> distinct modes in canonical order (sum last, so its alpha can use
    the texts the other modes already encoded)."""
    items = [m.strip() for m in modes.split(",")] if isinstance(modes, str) else [str(m).strip() for m in modes]
    items = [m for m in items if m]
    unknown = [m for m in items if m not in MODES]
    if unknown or not items:
        raise ValueError(f"modes must be a non-empty selection of {', '.join(MODES)}; got {modes!r}")
    return [m for m in MODES if m in items]


def parse_alpha(alpha: float | str) -> float | str:
    """``"auto"`` or a finite number >= 0."""
    if isinstance(alpha, str):
        if alpha.strip().lower() == "auto":
            return "auto"
        try:
            alpha = float(alpha)
        except ValueError:
            raise ValueError(f"alpha must be 'auto' or a number >= 0, got {alpha!r}") from None
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha >= 0 or alpha == float("inf"):
        raise ValueError(f"alpha must be 'auto' or a finite number >= 0, got {alpha!r}")
    return float(alpha)


def resolve_tasks(tasks: Sequence[Any] | str | None = None, benchmark: str | None = None) -> list[Any]:
    """Task instances from names (registered in-process first, else MTEB's), instances, or a benchmark name."""
    if (tasks is None) == (benchmark is None):
        raise ValueError("give either tasks or a benchmark (exactly one)")
    if benchmark is not None:
        if benchmark not in BENCHMARKS:
            raise ValueError(f"unknown benchmark {benchmark!r}; known: {', '.join(BENCHMARKS)}")
        names: list[Any] = list(BENCHMARKS[benchmark])
    elif isinstance(tasks, str):
        names = [t.strip() for t in tasks.split(",") if t.strip()]
    else:
        names = list(tasks or [])
    if not names:
        raise ValueError("no task to evaluate")
    resolved = [get_task(t) if isinstance(t, str) else t for t in names]
    seen: set[str] = set()
    for task in resolved:
        name = getattr(getattr(task, "metadata", None), "name", None)
        if name is None:
            raise TypeError(f"not an MTEB task: {task!r:.80}")
        if name in seen:
            raise ValueError(f"task {name!r} is listed twice")
        seen.add(name)
    return resolved


def _ensure_statistics(embedder: MoEEmbedder, store: PartsStore) -> None:
    """Calibrate as the core would on first use (built-in sentences, the embedder's prompt), through the
    parts cache, so a resumed run does not encode the calibration sentences again."""
    if embedder.standardize is None or embedder.statistics is not None:
        return
    parts = store.encode(embedder, list(calibration_sentences()), prompt=embedder.prompt)
    embedder.set_statistics(Statistics.fit(parts.hidden, parts.routing, source="built-in calibration set"))


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str), "utf-8")
    os.replace(tmp, path)


def run(
    model: str | MoEEmbedder,
    *,
    tasks: Sequence[Any] | str | None = None,
    benchmark: str | None = None,
    modes: str | Sequence[str] = MODES,
    prompt: str | PromptTemplate | None = None,
    alpha: float | str = 1.0,
    output_dir: str | Path = "results",
    cache_dir: str | Path | None = None,
    shard_size: int = 512,
    overwrite: bool = False,
    raise_error: bool = True,
    show_progress: bool = False,
    embedder_kwargs: dict[str, Any] | None = None,
    store: PartsStore | None = None,
) -> EvalReport:
    """Evaluate ``model`` on MTEB tasks in each of ``modes``, encoding every unique text once.

    Writes MTEB's result files under ``output_dir/results/``, ``summary.md`` / ``summary.json`` (the paper's
    layout, published figures beside ours where the paper evaluated the model) and ``alphas.json``.
    Raw parts are cached under ``cache_dir`` (default ``output_dir/parts-cache``): rerunning the same
    command after an interruption re-encodes nothing already cached and skips finished tasks.

    Args:
        model: ``moee:<alias>``, hub id, local directory, or a :class:`MoEEmbedder` (used as configured).
        tasks: task names (registered with :func:`~moee_plugins.evaluation.register_task`, else MTEB's),
            task instances, or a comma-separated string. Exclusive with ``benchmark``.
        benchmark: ``"moee-paper"``, the paper's 19 tasks.
        modes: any of ``hs``, ``rw``, ``concat``, ``sum``.
        prompt: prompt for every text (default ``prompteol``, or the given embedder's).
        alpha: weight of cos(RW) in ``sum`` mode, or ``"auto"`` (chosen per task without labels, see
            :func:`~moee_plugins.evaluation.select_alpha`).
        cache_dir: where raw parts are cached (default ``output_dir/parts-cache``); share it between runs.
        shard_size: texts encoded and written to the cache at a time (the most an interruption loses).
        overwrite: re-run tasks whose MTEB results exist (parts stay cached).
        raise_error: stop at the first failing task; else record the error and go on.
        embedder_kwargs: :class:`MoEEmbedder` options when ``model`` is not an embedder.
        store: the parts store to use (default: one for the embedder under ``cache_dir``), e.g. one of the
            stores of :func:`~moee_plugins.evaluation.run_layers` that share one forward pass.

    The forward passes the model ran are counted (``report.forward_passes``) and logged.
    """
    mteb = require("mteb", "mteb", feature="moee_plugins.evaluation")

    task_list = resolve_tasks(tasks, benchmark)
    mode_list = parse_modes(modes)
    alpha_value = parse_alpha(alpha)
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    defaults = {} if isinstance(model, MoEEmbedder) else {"prompt": prompt if prompt is not None else "prompteol"}
    embedder = build_embedder(model, owner="moee_plugins.evaluation.run", options_name="embedder_kwargs",
                              **defaults, **(embedder_kwargs or {}))
    template = embedder.prompt if prompt is None else resolve_prompt(prompt)
    if store is None:
        store = PartsStore.for_embedder(embedder, cache_dir if cache_dir is not None else output / "parts-cache",
                                        shard_size=shard_size)
    with counting_passes(embedder.model) as passes:
        report = _run(embedder, store, template, task_list, mode_list, alpha_value, output, overwrite, raise_error,
                      show_progress, model, prompt, mteb)
    report.forward_passes = passes[0]
    logger.info("%d texts through the model in %d forward passes", report.texts.get("forwarded", 0), passes[0])
    _finish(report, output)
    return report


@contextlib.contextmanager
def counting_passes(model: Any) -> Iterator[list[int]]:
    """Count the forward passes ``model`` runs inside the block (a pre-hook, removed afterwards)."""
    passes = [0]

    def count(*_: Any) -> None:
        passes[0] += 1

    handle = model.register_forward_pre_hook(count)
    try:
        yield passes
    finally:
        handle.remove()


def _finish(report: EvalReport, output: Path) -> None:
    summary_path = output / "summary.md"
    report.summary_path = str(summary_path)
    summary_path.write_text(report.to_markdown(), "utf-8")
    _write_json(output / "summary.json", report.to_dict())


def _run(embedder: MoEEmbedder, store: PartsStore, template: PromptTemplate, task_list: list[Any],
         mode_list: list[str], alpha_value: float | str, output: Path, overwrite: bool, raise_error: bool,
         show_progress: bool, model: Any, prompt: Any, mteb: Any) -> EvalReport:
    """Every task in every mode (results written by MTEB); the report without its summary files."""
    from .mteb import MoEEMTEBModel

    _ensure_statistics(embedder, store)
    wrapper = MoEEMTEBModel(embedder, mode=mode_list[0], prompt=template, store=store)
    meta = wrapper.mteb_model_meta
    result_cache = mteb.ResultCache(output)
    strategy = "always" if overwrite else "only-missing"
    encode_kwargs = {"batch_size": embedder.batch_size, "show_progress_bar": show_progress}

    alphas_path = output / "alphas.json"
    all_alphas: dict[str, Any] = json.loads(alphas_path.read_text("utf-8")) if alphas_path.exists() else {}
    alphas = all_alphas.setdefault(f"{meta.name}@{meta.revision}|{prompt_to_config(template)}", {})

    def evaluate(view: MoEEMTEBModel, task: Any, cache: Any) -> Any:
        return mteb.evaluate(view, task, cache=cache, overwrite_strategy=strategy, raise_error=raise_error,
                             show_progress_bar=False, co2_tracker=False, encode_kwargs=dict(encode_kwargs))

    rechosen: set[str] = set()

    def auto_alpha(task: Any) -> float:
        name = task.metadata.name
        if overwrite and name not in rechosen:
            alphas.pop(name, None)  # --overwrite re-runs everything: choose alpha again too
            rechosen.add(name)
        if name not in alphas:
            if name not in wrapper.encoded_tasks():
                # no mode encoded this task's texts in this run (their results were on disk, or sum runs
                # alone): an HS pass, not saved, collects them; the parts come from the cache when there
                logger.info("%s: collecting texts to choose alpha", name)
                evaluate(wrapper.with_mode("hs"), task, None)
            try:
                alphas[name] = select_alpha(embedder, wrapper.task_parts(name)).to_dict()
            except (ValueError, KeyError) as exc:
                logger.warning("%s: cannot choose alpha (%s); using alpha=1", name, exc)
                alphas[name] = {"alpha": 1.0, "note": str(exc)}
            _write_json(alphas_path, all_alphas)
        logger.info("%s: alpha=%g", name, alphas[name]["alpha"])
        return float(alphas[name]["alpha"])

    forwarded_before = store.forwarded
    report = EvalReport(model=str(model) if not isinstance(model, MoEEmbedder) else embedder.config["model"],
                        model_id=str(embedder.model_path), name=meta.name, revision=meta.revision,
                        prompt=prompt_to_config(template), modes=mode_list, alpha=alpha_value,
                        output_dir=str(output), cache_dir=str(store.directory or ""))
    for task in task_list:
        md = task.metadata
        row = TaskRow(name=md.name, type=md.type, score_key=score_key(md.type, md.main_score))
        for mode in mode_list:
            if mode == "sum":
                auto = alpha_value == "auto"
                view = wrapper.with_mode("sum", auto_alpha(task) if auto else alpha_value,
                                         alpha_label="auto" if auto else None)
            else:
                view = wrapper.with_mode(mode)
            result = evaluate(view, task, result_cache)
            if result.exceptions:
                row.errors[mode] = result.exceptions[0].exception
                logger.error("%s (%s) failed: %s", md.name, mode, row.errors[mode])
                continue
            task_result = result.task_results[0]
            row.scores[mode] = task_score(task_result, md.type, md.main_score)
            row.main_scores[mode] = float(task_result.get_score())
            path = result_cache.get_task_result_path(md.name, view.mteb_model_meta)
            row.result_files[mode] = str(path.relative_to(output)) if path.is_relative_to(output) else str(path)
            logger.info("%s (%s): %s = %.4f", md.name, mode, row.score_key, row.scores[mode])
        report.tasks.append(row)
    if "sum" in mode_list:
        report.alphas = ({t.metadata.name: alphas[t.metadata.name] for t in task_list if t.metadata.name in alphas}
                         if alpha_value == "auto" else {t.metadata.name: {"alpha": alpha_value} for t in task_list})
    report.texts = {"unique": len(wrapper.encoded_keys()),
                    "forwarded": store.forwarded - forwarded_before}
    return report
