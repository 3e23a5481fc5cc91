"""``moee eval --hidden-layers``: several hidden layers evaluated from one forward pass per text, side by side."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

mteb = pytest.importorskip("mteb")
threadpoolctl = pytest.importorskip("threadpoolctl")

import eval_tasks  # noqa: E402  (tests/ is on sys.path; registers the in-memory tasks)

from moee_plugins import MoEEmbedder  # noqa: E402
from moee_plugins.cli import main as cli_main  # noqa: E402
from moee_plugins.evaluation import parse_hidden_layers, run, run_layers  # noqa: E402
from moee_plugins.evaluation import runner as runner_module  # noqa: E402

TASKS = ["TinySTS", "TinyTopicClustering"]
CALIBRATION = 40


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    with threadpoolctl.threadpool_limits(1):
        yield


@pytest.fixture
def short_calibration(monkeypatch):
    sentences = runner_module.calibration_sentences()[:CALIBRATION]
    monkeypatch.setattr(runner_module, "calibration_sentences", lambda: sentences)
    return sentences


def test_three_layers_from_one_forward_pass_per_text(tiny_embedder, tmp_path, short_calibration):
    embedder = MoEEmbedder.from_config(tiny_embedder.config, model=tiny_embedder.model, tokenizer=tiny_embedder.tokenizer,
                                       statistics=None)
    rows: list[tuple[int, ...]] = []

    def record(_module, _args, kwargs):
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        rows.extend(tuple(ids[i][mask[i].bool()].tolist()) for i in range(ids.shape[0]))

    handle = embedder.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        report = run_layers(embedder, hidden_layers="-1,-2,-3", tasks=TASKS, modes="hs,sum", alpha=0.5,
                            output_dir=tmp_path)
    finally:
        handle.remove()
    texts = eval_tasks.encoded_texts(TASKS) | set(short_calibration)
    expected = set(map(tuple, embedder.tokenize(sorted(texts))))
    counts = Counter(row for row in rows if row in expected)  # (building a layer's view probes its routers once)
    assert set(counts) == expected and max(counts.values()) == 1  # every text through the model once, for 3 layers
    assert report.texts_forwarded == len(texts)
    assert [r.texts["forwarded"] for r in report.layers.values()][1:] == [0, 0]  # later layers: all cached
    hs = {layer: [t.scores["hs"] for t in r.tasks] for layer, r in report.layers.items()}
    assert all(np.isfinite(v).all() for v in hs.values()) and hs[-1] != hs[-3]
    summary = (tmp_path / "summary.md").read_text()
    assert f"Forward passes: {report.forward_passes} for {len(texts)} texts (calibration included)" in summary
    for layer in (-1, -2, -3):
        assert f"| this run | {layer} | HS |" in summary and (tmp_path / f"layer{layer}" / "summary.md").exists()

    # the last layer's scores are those of a plain run of the default embedder
    plain = run(MoEEmbedder.from_config(tiny_embedder.config, model=tiny_embedder.model,
                                        tokenizer=tiny_embedder.tokenizer, statistics=None),
                tasks=TASKS, modes="hs,sum", alpha=0.5, output_dir=tmp_path / "plain")
    for ours, theirs in zip(report.layers[-1].tasks, plain.tasks, strict=True):
        assert ours.scores == pytest.approx(theirs.scores, abs=1e-6)
    assert f"| forward passes | {plain.forward_passes} |" in (tmp_path / "plain" / "summary.md").read_text()


def test_cli_hidden_layers_prints_layers_side_by_side(tiny_alias, tmp_path, short_calibration, capsys):
    code = cli_main(["eval", "--model", tiny_alias, "--task-module", eval_tasks.__file__, "--tasks", "TinySTS",
                     "--modes", "hs", "--hidden-layers", "-1,0", "-o", str(tmp_path), "--device", "cpu", "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "| this run | -1 | HS |" in out and "| this run | 0 | HS |" in out and "Forward passes: " in out


def test_hidden_layers_are_checked(tiny_embedder, tmp_path):
    assert parse_hidden_layers("-1, -4,-8") == [-1, -4, -8]
    for bad in ("", "-1,-1", "a,b"):
        with pytest.raises(ValueError, match="hidden layers"):
            parse_hidden_layers(bad)
    with pytest.raises(ValueError, match="same decoder layer"):
        run_layers(tiny_embedder, hidden_layers=[-1, 2], tasks=TASKS, output_dir=tmp_path)
