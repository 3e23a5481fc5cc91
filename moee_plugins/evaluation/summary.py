"""The evaluation report and its ``summary.md``: the paper's layout, our scores beside the published ones."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

logger = logging.getLogger(__name__)

# (MTEB task type, column label), in the paper's column order
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("Classification", "CLF"), ("Clustering", "Clust"), ("PairClassification", "PairCLF"),
    ("Reranking", "Rerank"), ("STS", "STS"), ("Summarization", "Summ"),
)
MODE_LABELS = {"hs": "HS", "rw": "RW", "concat": "MoEE (concat)", "sum": "MoEE (sum)"}
# the score each task type is summarised by, when it is not the task's main score: pair classification's
# main score (max_ap) is a max over cosine/dot/euclidean/Manhattan; similarity_ap is the AP of the mode's
# own similarity (cosine, or the fused score for sum), the same quantity for every mode
SCORE_KEYS = {"PairClassification": "similarity_ap"}
PAPER = "arXiv:2410.10814"


def score_key(task_type: str, main_score: str) -> str:
    """The score key :func:`task_score` reads for a task of ``task_type``."""
    return SCORE_KEYS.get(task_type, main_score)


def task_score(task_result: Any, task_type: str, main_score: str) -> float:
    """Mean over evaluated splits and subsets of the task type's summary score (see :data:`SCORE_KEYS`)."""
    key = score_key(task_type, main_score)
    values = [entry[key] if key in entry else entry["main_score"]
              for entries in task_result.scores.values() for entry in entries]
    if not values:
        raise ValueError(f"result of {task_result.task_name} holds no scores")
    return float(sum(values) / len(values))


@lru_cache(maxsize=1)
def published_results() -> dict[str, Any]:
    """The paper's published figures shipped with the package (``paper_results.json``), or {} if absent."""
    try:
        text = resources.files("moee_plugins.evaluation").joinpath("paper_results.json").read_text("utf-8")
    except (FileNotFoundError, ModuleNotFoundError):  # pragma: no cover - packaging problem
        logger.warning("paper_results.json is missing from the installed package; no published figures")
        return {}
    return json.loads(text)


def published_for(model_ids: list[str], prompt: str) -> dict[str, Any] | None:
    """The paper's figures for the first of ``model_ids`` it evaluated with ``prompt``: ``label``, ``scores``
    (mode -> column label -> x100) and ``tasks`` (mode -> MTEB task name -> x100); ``None`` if it has none."""
    models = {key.lower(): value for key, value in published_results().get("models", {}).items()}
    for model_id in model_ids:
        entry = models.get(str(model_id).rstrip("/").lower())
        figures = (entry or {}).get("prompts", {}).get(prompt)
        if figures:
            return {"label": entry["label"], "scores": figures.get("scores", {}), "tasks": figures.get("tasks", {})}
    return None


@dataclass
class TaskRow:
    """One task's outcome in every mode."""

    name: str
    type: str
    score_key: str
    scores: dict[str, float | None] = field(default_factory=dict)  # mode -> summary score (0..1)
    main_scores: dict[str, float | None] = field(default_factory=dict)  # mode -> MTEB main score
    result_files: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


@dataclass
class EvalReport:
    """What ``moee eval`` / :func:`moee_plugins.evaluation.run` produced."""

    model: str
    model_id: str
    name: str
    revision: str
    prompt: str
    modes: list[str]
    alpha: float | str
    tasks: list[TaskRow] = field(default_factory=list)
    alphas: dict[str, dict[str, Any]] = field(default_factory=dict)
    texts: dict[str, int] = field(default_factory=dict)
    forward_passes: int = 0
    output_dir: str = ""
    cache_dir: str = ""
    summary_path: str = ""

    def category_scores(self) -> dict[str, dict[str, float | None]]:
        """mode -> {column label: mean task score x100, ..., "Avg": mean of the columns that have a value}."""
        table: dict[str, dict[str, float | None]] = {}
        for mode in self.modes:
            row: dict[str, float | None] = {}
            for task_type, label in CATEGORIES:
                values = [t.scores.get(mode) for t in self.tasks if t.type == task_type]
                values = [v for v in values if v is not None and math.isfinite(v)]
                row[label] = 100 * sum(values) / len(values) if values else None
            present = [v for v in row.values() if v is not None]
            row["Avg"] = sum(present) / len(present) if present else None
            table[mode] = row
        return table

    def published(self) -> dict[str, Any] | None:
        return published_for([self.model_id, self.model], self.prompt)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["categories"] = self.category_scores()
        published = self.published()
        data["published"] = {"source": PAPER, **published} if published else None
        return data

    def to_markdown(self) -> str:
        return render_markdown(self)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.2f}"


def render_markdown(report: EvalReport) -> str:
    """``summary.md``: settings, the paper-layout table (with published rows where the paper has them),
    per-task scores, and the alpha chosen for each task."""
    labels = [label for _, label in CATEGORIES] + ["Avg"]
    alpha = "auto (chosen per task, below)" if report.alpha == "auto" else f"{float(report.alpha):g}"
    texts = report.texts
    lines = [
        f"# MoEE on MTEB: `{report.name}`",
        "",
        "| setting | value |",
        "|---|---|",
        f"| model | `{report.model}` (`{report.model_id}`) |",
        f"| MTEB model name / revision | `{report.name}` / `{report.revision}` |",
        f"| prompt | `{report.prompt}` |",
        f"| modes | {', '.join(MODE_LABELS[m] for m in report.modes)} |",
    ]
    if "sum" in report.modes:
        lines.append(f"| alpha (MoEE sum) | {alpha} |")
    if texts.get("unique"):
        lines.append(f"| texts encoded | {texts['unique']} unique: {texts.get('forwarded', 0)} through the model in this "
                     f"run, {texts['unique'] - texts.get('forwarded', 0)} from the parts cache |")
    elif texts:
        lines.append("| texts encoded | none: every result was already on disk |")
    lines.append(f"| forward passes | {report.forward_passes} |")
    if report.cache_dir:
        lines.append(f"| parts cache | `{report.cache_dir}` |")
    lines += ["", "## Scores (x100, the paper's layout)", "",
              "| Source | Mode | " + " | ".join(labels) + " |",
              "|---|---|" + "---:|" * len(labels)]
    published = report.published()
    table = report.category_scores()
    for mode in report.modes:
        row = table[mode]
        lines.append(f"| this run | {MODE_LABELS[mode]} | " + " | ".join(_fmt(row[c]) for c in labels) + " |")
        paper = (published or {}).get("scores", {}).get(mode)
        if paper:
            lines.append(f"| paper ({published['label']}) | {MODE_LABELS[mode]} | "
                         + " | ".join(_fmt(paper.get(c)) for c in labels) + " |")
    lines += [
        "",
        "Each column is the mean over that type's tasks; Avg is the mean of the columns with a value. "
        "Pair classification uses the AP of the mode's own similarity (`similarity_ap`); other types use "
        "the task's MTEB main score. MoEE (sum) is scored with cos(HS) + alpha cos(RW) in every task type.",
    ]
    if published:
        lines.append(f"Published figures: {PAPER} ({published['label']}, prompt `{report.prompt}`, Tables 3-4 and "
                     "8-12), from `moee_plugins/evaluation/paper_results.json`. The paper ran 4-bit weights with "
                     "per-batch z-scoring; its averages compare with this run only on the full `moee-paper` benchmark.")
    paper_tasks = (published or {}).get("tasks", {})
    paper_modes = [m for m in report.modes if paper_tasks.get(m)]
    mode_labels = [MODE_LABELS[m] for m in report.modes] + [f"paper {MODE_LABELS[m]}" for m in paper_modes]
    lines += ["", "## Per task (x100)", "",
              "| Task | Type | Score | " + " | ".join(mode_labels) + " |",
              "|---|---|---|" + "---:|" * len(mode_labels)]
    for task in report.tasks:
        cells = []
        for mode in report.modes:
            cells.append("error" if mode in task.errors else _fmt(
                None if task.scores.get(mode) is None else 100 * task.scores[mode]))
        cells += [_fmt(paper_tasks[mode].get(task.name)) for mode in paper_modes]
        lines.append(f"| {task.name} | {task.type} | `{task.score_key}` | " + " | ".join(cells) + " |")
    if "sum" in report.modes and report.alphas:
        lines += ["", "## Alpha for MoEE (sum)", ""]
        if report.alpha == "auto":
            lines += ["Chosen without labels on each task's texts: the alpha maximising the mean Spearman correlation "
                      "of the fused pair similarity with the HS and with the RW similarity.", "",
                      "| Task | alpha | agreement | rho(fused, HS) | rho(fused, RW) | rho(HS, RW) | texts | pairs |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|"]
            for task in report.tasks:
                c = report.alphas.get(task.name)
                if c is None:
                    continue
                if "agreement" not in c:
                    lines.append(f"| {task.name} | {c['alpha']:g} | n/a | n/a | n/a | n/a | n/a | n/a |")
                    continue
                lines.append(f"| {task.name} | {c['alpha']:g} | {c['agreement']:.4f} | {c['spearman_hs']:.4f} | "
                             f"{c['spearman_rw']:.4f} | {c['spearman_hs_rw']:.4f} | {c['num_texts']} | "
                             f"{c['num_pairs']} |")
        else:
            lines.append(f"Fixed: alpha = {float(report.alpha):g} for every task.")
    errors = [(t.name, m, e) for t in report.tasks for m, e in t.errors.items()]
    if errors:
        lines += ["", "## Errors", ""] + [f"- {name} ({MODE_LABELS[mode]}): {error}" for name, mode, error in errors]
    lines += ["", "MTEB's own result files are under `results/` in this folder (one experiment folder per mode).", ""]
    return "\n".join(lines)
