"""The ``moee`` command line as a user meets it: one-line errors with exit codes, --version, --debug, -q, SIGTERM,
announced calibration and ``moee calibrate`` / ``--statistics``."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

from moee_plugins import MoEEmbedder, __version__
from moee_plugins.cli import main
from moee_plugins.commands import embed as embed_command

pytestmark = pytest.mark.usefixtures("one_thread")

DOCS = [f"document number {i} about {w}" for i, w in enumerate(["hockey", "orbit", "printer", "faith", "engine",
                                                                  "senate", "doctor"])]
ENCODE_PARTS = MoEEmbedder.encode_parts


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("\n".join(DOCS) + "\n", encoding="utf-8")
    return path


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"moee-plugins {__version__}"


def test_an_unexpected_error_is_one_line_unless_debug(corpus, tmp_path, monkeypatch, capsys):
    def broken(args):
        raise RuntimeError("something deep failed\nwith a second line")

    monkeypatch.setattr(embed_command, "run", broken)
    argv = ["embed", str(corpus), "-o", str(tmp_path / "v.npy")]
    assert main(argv) == 1
    assert one_line(capsys.readouterr().err) == ("moee embed: error: RuntimeError: something deep failed "
                                                 "(run again with --debug for the full traceback)")
    for flags in (["--debug"], ["-v"]):
        with pytest.raises(RuntimeError, match="something deep failed"):
            main(argv + flags)
    with pytest.raises(RuntimeError):
        main(["--debug", *argv])


@pytest.mark.parametrize(("argv", "message"), [
    (["embed", "{corpus}", "-o", "{tmp}/v.npy", "--model", "{tmp}/no-such-model"], "moee embed: error: cannot load model"),
    (["embed", "{tmp}/missing.jsonl", "-o", "{tmp}/v.npy"], "moee embed: error: no such corpus file"),
    (["calibrate", "-o", "{corpus}"], "moee calibrate: error: "),
    (["calibrate", "-o", "{tmp}/s.json", "--texts", "{tmp}/x.xml"], "moee calibrate: error: unsupported corpus format"),
    (["embed", "{corpus}", "-o", "{tmp}/v.npy", "--statistics", "{corpus}"], "moee embed: error: cannot read statistics"),
])
def test_user_errors_are_one_line_with_exit_2(corpus, tmp_path, capsys, argv, message):
    argv = [a.format(corpus=corpus, tmp=tmp_path) for a in argv]
    assert main([*argv, "--device", "cpu"]) == 2
    assert one_line(capsys.readouterr().err).startswith(message)


def test_eval_offline_is_one_line_with_exit_2(tiny_model_dir, tmp_path, capsys):
    pytest.importorskip("mteb")
    code = main(["eval", "--model", str(tiny_model_dir), "--tasks", "STSBenchmark", "-o", str(tmp_path / "results"),
                 "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, err
    line = one_line("\n".join(line for line in err.splitlines() if line.startswith("moee eval")))
    assert "cannot download the MTEB data of task(s) STSBenchmark" in line and "--task-module" in line
    assert "Traceback" not in err


def test_sigterm_stops_embed_with_the_resume_hint(corpus, tmp_path, tiny_alias, tiny_embedder, monkeypatch, capsys):
    out = tmp_path / "v.npy"
    calls = []

    def encode_parts(embedder, texts, **kwargs):
        texts = list(texts)
        if texts and texts[0] in DOCS:
            calls.append(texts)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler stopping the job would
        return ENCODE_PARTS(embedder, texts, **kwargs)

    monkeypatch.setattr(MoEEmbedder, "encode_parts", encode_parts)
    argv = ["embed", str(corpus), "-o", str(out), "--model", tiny_alias, "--shard-size", "3", "--device", "cpu", "-q",
            "--statistics", str(_statistics_file(tmp_path, tiny_embedder))]
    handler = signal.getsignal(signal.SIGTERM)
    assert main(argv) == 143
    err = capsys.readouterr().err
    assert "terminated (SIGTERM)" in err and "1 of 3 shards are saved" in err and "--resume" in err
    assert signal.getsignal(signal.SIGTERM) == handler  # the command's handler is gone once it returns
    monkeypatch.setattr(MoEEmbedder, "encode_parts", ENCODE_PARTS)
    assert main([*argv, "--resume"]) == 0
    np.testing.assert_allclose(np.load(out), tiny_embedder.encode(DOCS), atol=1e-4)


def _statistics_file(tmp_path, embedder) -> object:
    """What `moee calibrate` writes, from the session's (already calibrated) embedder."""
    path = tmp_path / "stats.json"
    path.write_text(json.dumps({"format": embed_command.STATISTICS_FORMAT, "version": 1,
                                "settings": embed_command.raw_part_settings(embedder),
                                "statistics": embedder.config["statistics"]}), encoding="utf-8")
    return path


def test_calibrate_then_embed_with_statistics(corpus, tmp_path, tiny_alias, tiny_embedder, capsys):
    stats = tmp_path / "stats.json"
    assert main(["calibrate", "-o", str(stats), "--model", tiny_alias, "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "calibrating the standardisation statistics on the 520 built-in sentences" in captured.err
    assert f"to {stats}" in captured.out
    saved = json.loads(stats.read_text())
    assert saved["statistics"]["hidden"] == tiny_embedder.config["statistics"]["hidden"]  # deterministic calibration
    assert "model.safetensors" in saved["settings"]["model_files"]["model"]

    out = tmp_path / "v.npy"
    assert main(["embed", str(corpus), "-o", str(out), "--model", tiny_alias, "--statistics", str(stats),
                 "--device", "cpu"]) == 0
    assert "calibrating" not in capsys.readouterr().err  # the saved statistics were used: no calibration pass
    np.testing.assert_allclose(np.load(out), tiny_embedder.encode(DOCS), atol=1e-4)

    saved["settings"]["prompt"] = "none"
    stats.write_text(json.dumps(saved))
    assert main(["embed", str(corpus), "-o", str(tmp_path / "w.npy"), "--model", tiny_alias, "--statistics",
                 str(stats), "--device", "cpu", "-q"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "fitted with other settings" in line and "prompt" in line and "moee calibrate" in line


def test_calibrate_on_own_texts_and_quiet_means_quiet(corpus, tmp_path, tiny_model_dir, capsys):
    stats = tmp_path / "stats.json"
    assert main(["calibrate", "-o", str(stats), "--model", str(tiny_model_dir), "--texts", str(corpus), "--device",
                 "cpu"]) == 0
    assert "Loading weights" in capsys.readouterr().err  # transformers' bar, shown without -q
    assert json.loads(stats.read_text())["statistics"]["num_texts"] == len(DOCS)
    assert main(["calibrate", "-o", str(stats), "--model", str(tiny_model_dir), "--texts", str(corpus), "--device",
                 "cpu", "--overwrite", "-q"]) == 0
    assert capsys.readouterr().err == ""  # no bar of ours or of any library


def test_commands_are_listed(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in ("embed", "topics", "eval", "calibrate", "models"))


def test_calibrate_with_dimensions_then_embed_compact_vectors_and_resume(corpus, tmp_path, tiny_alias, tiny_embedder,
                                                                         capsys, monkeypatch):
    """The reduction is fitted once by `moee calibrate --dimensions`, saved beside the statistics, and applied by
    `moee embed --dimensions`: the vectors are the core's compact ones; resuming keeps them."""
    from moee_plugins.core.standardize import calibration_sentences

    stats = tmp_path / "stats.json"
    assert main(["calibrate", "-o", str(stats), "--model", tiny_alias, "--device", "cpu", "--dimensions", "4,8",
                 "-q"]) == 0
    assert "a sum reduction to 4, 8 dimensions" in capsys.readouterr().out
    saved = json.loads(stats.read_text())
    assert saved["reduction"]["dimensions"] == [4, 8] and saved["reduction"]["mode"] == "sum"
    core = MoEEmbedder.from_config(tiny_embedder.config, model=tiny_embedder.model, tokenizer=tiny_embedder.tokenizer)
    core.calibrate(list(calibration_sentences()), dimensions=[4, 8])  # what the command did, in the library

    out = tmp_path / "v.npy"
    argv = ["embed", str(corpus), "-o", str(out), "--model", tiny_alias, "--statistics", str(stats), "--device",
            "cpu", "--dimensions", "8", "--shard-size", "3", "-q"]
    calls = {"n": 0}

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return ENCODE_PARTS(self, *args, **kwargs)

    monkeypatch.setattr(MoEEmbedder, "encode_parts", interrupted)
    assert main(argv) == 130
    monkeypatch.setattr(MoEEmbedder, "encode_parts", ENCODE_PARTS)
    capsys.readouterr()
    assert main([a for a in argv if a not in ("--statistics", str(stats))] + ["--resume"]) == 0  # from the manifest
    assert "resuming: 1 of 3 shards" in capsys.readouterr().err
    vectors = np.load(out)
    assert vectors.shape == (len(DOCS), 8)
    np.testing.assert_allclose(vectors, core.encode(DOCS, dimensions=8), atol=1e-5)

    for extra, message in ((["--dimensions", "6"], "--dimensions 6: dimensions=6 is not fitted"),
                           (["--dimensions", "8", "--mode", "concat"], "fitted on sum"),
                           (["--dimensions", "0"], "--dimensions")):
        assert main(["embed", str(corpus), "-o", str(tmp_path / "w.npy"), "--model", tiny_alias, "--statistics",
                     str(stats), "--device", "cpu", "-q", *extra]) == 2
        assert message in one_line(capsys.readouterr().err)
    assert main(["embed", str(corpus), "-o", str(tmp_path / "w.npy"), "--model", tiny_alias, "--device", "cpu",
                 "--dimensions", "8", "-q"]) == 2
    assert "--dimensions needs the --statistics file" in one_line(capsys.readouterr().err)
