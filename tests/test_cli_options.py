"""Every sub-command shares the same model options (moee_plugins/commands/_options.py)."""

from __future__ import annotations

import numpy as np
import pytest

from moee_plugins import MoEEmbedder
from moee_plugins.cli import build_parser, main


@pytest.mark.parametrize("command", ["embed", "topics", "eval"])
def test_model_options_are_the_same_everywhere(command):
    extra = {"embed": ["in.txt", "-o", "out.npy"], "topics": ["in.txt", "-o", "out"], "eval": ["--model", "m",
                                                                                              "--tasks", "T"]}[command]
    args = build_parser().parse_args([command, *extra, "--routing", "probs", "--layers", "1,2", "--device", "cpu",
                                      "--dtype", "float32", "--max-length", "64", "--batch-size", "4"])
    assert (args.routing, args.layers, args.device, args.dtype, args.max_length, args.batch_size) == (
        "probs", "1,2", "cpu", "float32", 64, 4)


def test_embed_honours_routing_and_layers(tiny_model_dir, tmp_path, small_builtin_calibration):
    corpus = tmp_path / "corpus.txt"
    texts = ["The hockey team won.", "GPUs and printers", "moon"]
    corpus.write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = tmp_path / "rw.npy"
    assert main(["embed", str(corpus), "-o", str(out), "--model", str(tiny_model_dir), "--mode", "rw",
                 "--routing", "probs", "--layers", "2", "--device", "cpu", "-q"]) == 0
    expected = MoEEmbedder(str(tiny_model_dir), mode="rw", routing="probs", layers=[2], device="cpu").encode(texts)
    vectors = np.load(out)
    assert vectors.shape == (3, 8)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_malformed_layers_is_a_clean_error(tiny_model_dir, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a\nb\n", encoding="utf-8")
    assert main(["embed", str(corpus), "-o", str(tmp_path / "x.npy"), "--model", str(tiny_model_dir),
                 "--layers", "one,two"]) == 2
    assert "--layers must be comma-separated integers" in capsys.readouterr().err
