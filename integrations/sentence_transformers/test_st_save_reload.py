"""Save and reload: the saved folder's contents, identity in-process and in a fresh Python process."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

import moee_plugins.sentence_transformers as mst
from moee_plugins.sentence_transformers import CONFIG_FILE, STATISTICS_FILE, WEIGHTS_DIR, load


@pytest.fixture(scope="module")
def saved(st_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("st-saved") / "my-moee"
    st_model.save(str(path))
    return path


@pytest.fixture(scope="module")
def expected(st_model, texts) -> np.ndarray:
    return st_model.encode(texts)


def test_saved_folder_holds_config_statistics_tokenizer_and_card(saved, st_model, tiny_model_dir, tiny_alias):
    names = {p.name for p in saved.iterdir()}
    assert {"modules.json", "config_sentence_transformers.json", CONFIG_FILE, STATISTICS_FILE, "README.md",
            "tokenizer_config.json"} <= names
    assert "config.json" not in names  # nothing that could be mistaken for a Hugging Face model's config
    modules = json.loads((saved / "modules.json").read_text())
    assert modules == [{"idx": 0, "name": "0", "path": "", "type": "moee_plugins.sentence_transformers.MoEEModule"}]
    config = json.loads((saved / CONFIG_FILE).read_text())
    assert config["format"] == "moee-plugins/embedder" and config["weights"] is None
    assert config["source"] == tiny_alias
    assert config["embedder"]["model"] == str(tiny_model_dir)  # the alias's target: aliases are per-process
    assert config["embedder"]["mode"] == "sum" and "statistics" not in config["embedder"]
    statistics = json.loads((saved / STATISTICS_FILE).read_text())
    assert statistics == st_model[0].embedder.statistics.to_dict()
    assert json.loads((saved / "config_sentence_transformers.json").read_text())["similarity_fn_name"] == "dot"
    card = (saved / "README.md").read_text()
    assert "import moee_plugins" in card and "training-free" in card and "| mode | `sum`" in card
    assert "pip install moee-plugins" not in card and "[moee-plugins](https://openreview" not in card
    assert "from a clone" in card and "trust_remote_code=True" in card


def test_reload_in_process_is_identical(saved, expected, texts):
    reloaded = SentenceTransformer(f"moee:{saved}", device="cpu")
    assert reloaded.similarity_fn_name == "dot"
    np.testing.assert_array_equal(reloaded.encode(texts), expected)
    # a bare folder name follows sentence-transformers' own rule for classes outside its package
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        SentenceTransformer(str(saved), device="cpu")
    trusted = SentenceTransformer(str(saved), device="cpu", trust_remote_code=True)
    np.testing.assert_array_equal(trusted.encode(texts), expected)


def test_reload_in_a_fresh_process_is_identical(saved, expected, texts, tmp_path, run_python):
    out = tmp_path / "reloaded.npy"
    run_python(f"""
        import sys
        import numpy as np
        import moee_plugins
        from moee_plugins import _st_hook
        _st_hook.activate()                                   # what `import moee_plugins` does once wired
        assert "sentence_transformers" not in sys.modules     # lazy: nothing imported yet
        from sentence_transformers import SentenceTransformer
        model = SentenceTransformer({"moee:" + str(saved)!r}, device="cpu")
        np.save({str(out)!r}, model.encode({texts!r}))
    """)
    reloaded = np.load(out)
    print(f"fresh-process reload: max abs difference {np.abs(reloaded - expected).max():.3g}")
    np.testing.assert_array_equal(reloaded, expected)


def test_plain_import_moee_plugins_enables_the_hook(saved, expected, texts, tiny_model_dir, tmp_path, run_python):
    """The public contract: ``import moee_plugins`` alone makes ``moee:`` names and saved folders load."""
    out = tmp_path / "plain.npz"
    run_python(f"""
        import json, sys
        import numpy as np
        import moee_plugins
        assert "sentence_transformers" not in sys.modules
        from sentence_transformers import SentenceTransformer
        statistics = json.load(open({str(saved / STATISTICS_FILE)!r}))
        built = SentenceTransformer({"moee:" + str(tiny_model_dir)!r}, device="cpu",
                                    model_kwargs={{"statistics": statistics}})
        reloaded = SentenceTransformer({"moee:" + str(saved)!r}, device="cpu")
        np.savez({str(out)!r}, built=built.encode({texts!r}), reloaded=reloaded.encode({texts!r}))
    """)
    got = np.load(out)
    np.testing.assert_array_equal(got["reloaded"], expected)
    np.testing.assert_allclose(got["built"], expected, atol=1e-6)


def test_save_with_weights_is_self_contained(st_model, expected, texts, tmp_path, monkeypatch):
    monkeypatch.setattr(st_model[0], "include_weights", True)
    path = tmp_path / "with-weights"
    st_model.save(str(path))
    assert (path / WEIGHTS_DIR / "config.json").is_file() and not (path / "config.json").exists()
    assert json.loads((path / CONFIG_FILE).read_text())["weights"] == WEIGHTS_DIR
    reloaded = SentenceTransformer(f"moee:{path}", device="cpu")
    assert reloaded[0].embedder.model_path == str((path / WEIGHTS_DIR).resolve()) and reloaded[0].include_weights
    np.testing.assert_array_equal(reloaded.encode(texts), expected)


def test_reload_options_override_but_cannot_opt_into_remote_code(saved, tiny_embedder, texts, tmp_path):
    copy = tmp_path / "edited"
    shutil.copytree(saved, copy)
    config = json.loads((copy / CONFIG_FILE).read_text())
    config["embedder"]["trust_remote_code"] = True  # a saved file must not switch this on for the user
    (copy / CONFIG_FILE).write_text(json.dumps(config))
    reloaded = SentenceTransformer(f"moee:{copy}", device="cpu", model_kwargs={"mode": "hs"})
    embedder = reloaded[0].embedder
    assert embedder.trust_remote_code is False and embedder.mode == "hs"
    np.testing.assert_allclose(reloaded.encode(texts), tiny_embedder.combine(tiny_embedder.encode_parts(texts),
                                                                              mode="hs"), atol=1e-5)


def test_other_third_party_classes_still_need_trust_remote_code(saved, tmp_path):
    copy = tmp_path / "foreign"
    shutil.copytree(saved, copy)
    modules = json.loads((copy / "modules.json").read_text())
    modules[0]["type"] = "some_package.SomeModule"
    (copy / "modules.json").write_text(json.dumps(modules))
    for name in (str(copy), f"moee:{copy}"):
        with pytest.raises(ValueError, match="trust_remote_code=True"):
            SentenceTransformer(name, device="cpu")


def test_factory_reloads_a_saved_folder_without_the_hook(saved, expected, texts):
    mst.uninstall_hook()
    try:
        with pytest.raises(ValueError, match="trust_remote_code=True"):
            SentenceTransformer(str(saved), device="cpu")  # the stock behaviour, untouched without the hook
        reloaded = load(str(saved), device="cpu")
    finally:
        mst.install_hook()
    np.testing.assert_array_equal(reloaded.encode(texts), expected)


@pytest.mark.parametrize("order", ["moee_first", "sentence_transformers_first"])
def test_both_import_orders_install_the_hook(saved, expected, texts, tmp_path, run_python, order):
    """``import moee_plugins`` then ``from moee_plugins.sentence_transformers import ...`` before
    sentence-transformers (and the reverse) both leave ``SentenceTransformer("moee:...")`` working."""
    first = ("import moee_plugins\nfrom moee_plugins.sentence_transformers import MoEEModule\n"
             "from sentence_transformers import SentenceTransformer\n")
    if order == "sentence_transformers_first":
        first = ("from sentence_transformers import SentenceTransformer\nimport moee_plugins\n"
                 "from moee_plugins.sentence_transformers import MoEEModule\n")
    out = tmp_path / f"{order}.npy"
    result = run_python("import warnings\nwarnings.simplefilter('error')\n" + first + f"""
import numpy as np
model = SentenceTransformer({"moee:" + str(saved)!r}, device="cpu")
assert isinstance(model[0], MoEEModule)
np.save({str(out)!r}, model.encode({texts!r}))
""")
    assert "could not install" not in result.stderr
    np.testing.assert_array_equal(np.load(out), expected)


def test_hostile_base_model_code_never_runs_through_a_saved_folder(saved, hostile_model, tmp_path):
    hostile, marker = hostile_model
    copy = tmp_path / "points-at-hostile"
    shutil.copytree(saved, copy)
    config = json.loads((copy / CONFIG_FILE).read_text())
    config["embedder"].update(model=str(hostile), trust_remote_code=True)
    (copy / CONFIG_FILE).write_text(json.dumps(config))
    SentenceTransformer(f"moee:{copy}", device="cpu")
    assert not marker.exists()


@pytest.mark.parametrize("weights", ["../elsewhere", "/tmp"])
def test_weights_outside_the_saved_folder_are_refused(saved, tmp_path, weights):
    copy = tmp_path / "escaping"
    shutil.copytree(saved, copy)
    config = json.loads((copy / CONFIG_FILE).read_text())
    config["weights"] = weights
    (copy / CONFIG_FILE).write_text(json.dumps(config))
    for name, trust in ((f"moee:{copy}", False), (str(copy), True)):
        with pytest.raises(ValueError, match="points outside the folder"):
            SentenceTransformer(name, device="cpu", trust_remote_code=trust)
