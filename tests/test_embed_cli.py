"""``moee embed``: formats, row order, and resuming an interrupted run into the very same output."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moee_plugins import MoEEmbedder
from moee_plugins.cli import main
from moee_plugins.commands import embed as embed_command
from moee_plugins.io import MANIFEST, ShardedOutput, ShardError, read_vectors, shard_dir_for

pytestmark = pytest.mark.usefixtures("one_thread")


WORDS = ("hockey", "team", "printer", "graphics", "orbit", "shuttle", "doctor", "disease", "engine", "church", "faith",
         "keys", "senate")
N_DOCS = 22
SHARD = 4  # -> 6 shards, the last one short


def make_docs(seed: int = 1) -> list[str]:
    rng = np.random.default_rng(seed)
    docs = [" ".join(rng.choice(WORDS, size=int(k))) for k in rng.integers(1, 40, size=N_DOCS)]
    docs[5] = ""  # an empty line is a document too, and keeps its row
    return docs


DOCS = make_docs()
ENCODE_PARTS = MoEEmbedder.encode_parts  # the real one, whatever a test patches


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The same documents as .txt, .jsonl (field "body"), .csv and .parquet (column "content")."""
    import pandas as pd

    root = tmp_path_factory.mktemp("corpus")
    (root / "docs.txt").write_text("\n".join(DOCS) + "\n", encoding="utf-8")
    with (root / "docs.jsonl").open("w", encoding="utf-8") as handle:
        for i, doc in enumerate(DOCS):
            handle.write(json.dumps({"id": i, "body": doc}) + "\n")
    pd.DataFrame({"content": DOCS}).to_csv(root / "docs.csv", index=False)
    pd.DataFrame({"content": DOCS}).to_parquet(root / "docs.parquet")
    return root


@pytest.fixture(scope="module")
def expected(tiny_embedder) -> np.ndarray:
    return tiny_embedder.encode(DOCS)


def cli(*args: str) -> int:
    return main(["embed", *map(str, args), "--device", "cpu", "-q"])


class Interrupt:
    """Replaces ``MoEEmbedder.encode_parts``: counts the documents of each shard, Ctrl-C on shard ``after``+1."""

    def __init__(self, monkeypatch, after: int | None) -> None:
        self.after = after
        self.shards: list[list[str]] = []
        interrupt = self

        def encode_parts(embedder, texts, **kwargs):
            if list(texts) and all(t in DOCS for t in texts):  # a shard (calibration texts are not in DOCS)
                if interrupt.after is not None and len(interrupt.shards) == interrupt.after:
                    raise KeyboardInterrupt
                interrupt.shards.append(list(texts))
            return ENCODE_PARTS(embedder, texts, **kwargs)

        monkeypatch.setattr(MoEEmbedder, "encode_parts", encode_parts)

    @property
    def rows(self) -> int:
        return sum(len(shard) for shard in self.shards)


def test_txt_to_npy_row_i_is_document_i(corpus, tmp_path, tiny_alias, fast, expected, capsys):
    out = tmp_path / "vectors.npy"
    assert cli(corpus / "docs.txt", "-o", out, "--model", tiny_alias, "--shard-size", SHARD) == 0
    vectors = np.load(out)
    assert vectors.dtype == np.float32 and vectors.shape == (N_DOCS, expected.shape[1])
    assert np.abs(vectors - expected).max() < 1e-4
    assert not shard_dir_for(out).exists()  # the scratch shards are gone once the output is whole
    assert f"wrote {N_DOCS} x {expected.shape[1]}" in capsys.readouterr().out


@pytest.mark.parametrize(("source", "options"), [
    ("docs.jsonl", ["--text-field", "body"]),
    ("docs.csv", ["--text-column", "content"]),
    ("docs.parquet", ["--text-column", "content"]),
])
def test_every_input_format_to_parquet_has_ids_and_vectors(corpus, tmp_path, tiny_alias, fast, expected, source,
                                                            options):
    import pyarrow.parquet as pq

    out = tmp_path / "vectors.parquet"
    assert cli(corpus / source, "-o", out, "--model", tiny_alias, "--shard-size", SHARD, *options) == 0
    table = pq.read_table(out)
    assert table.column_names == ["id", "vector"]
    ids, vectors = read_vectors(out)
    assert ids.tolist() == list(range(N_DOCS))
    assert np.abs(vectors - expected).max() < 1e-4


def test_resume_after_an_interruption_gives_the_output_of_a_clean_run(corpus, tmp_path, tiny_alias, tiny_embedder,
                                                                       monkeypatch, capsys):
    # a clean, uninterrupted run (calibration skipped: its statistics are the fixture's)
    clean = tmp_path / "clean.npy"
    with monkeypatch.context() as patch:
        fast_build = embed_command.build_embedder

        def build(args):
            embedder = fast_build(args)
            embedder.set_statistics(tiny_embedder.statistics)
            return embedder

        patch.setattr(embed_command, "build_embedder", build)
        assert cli(corpus / "docs.txt", "-o", clean, "--model", tiny_alias, "--shard-size", SHARD) == 0

    # a real run, calibrating on its own, interrupted (Ctrl-C) while computing its third shard
    out = tmp_path / "resumed.npy"
    first = Interrupt(monkeypatch, after=2)
    assert cli(corpus / "docs.txt", "-o", out, "--model", tiny_alias, "--shard-size", SHARD) == 130
    assert "--resume" in capsys.readouterr().err
    assert not out.exists()
    shards = sorted(p.name for p in shard_dir_for(out).glob("shard-*.npy"))
    assert shards == ["shard-000000.npy", "shard-000001.npy"] and first.rows == 2 * SHARD
    manifest = json.loads((shard_dir_for(out) / MANIFEST).read_text())
    # calibration is deterministic given the model: this run's statistics are the fixture's, to the bit
    assert manifest["statistics"]["hidden"] == tiny_embedder.config["statistics"]["hidden"]
    assert manifest["statistics"]["routing"] == tiny_embedder.config["statistics"]["routing"]

    # resume: only the missing rows are computed, each once, and the file is byte-identical to the clean one
    second = Interrupt(monkeypatch, after=None)
    assert cli(corpus / "docs.txt", "-o", out, "--model", tiny_alias, "--resume") == 0
    assert "2 of 6 shards" in capsys.readouterr().err
    assert [doc for shard in second.shards for doc in shard] == DOCS[2 * SHARD :]
    assert out.read_bytes() == clean.read_bytes()
    assert not shard_dir_for(out).exists()

    # resuming a finished run changes nothing
    assert cli(corpus / "docs.txt", "-o", out, "--model", tiny_alias, "--resume") == 0
    assert out.read_bytes() == clean.read_bytes()


@pytest.fixture
def interrupted(corpus, tmp_path, tiny_alias, fast, monkeypatch):
    """An output whose run stopped after one shard: (input copy, output path, shard bytes)."""
    source = tmp_path / "docs.txt"
    source.write_bytes((corpus / "docs.txt").read_bytes())
    out = tmp_path / "vectors.parquet"
    with monkeypatch.context() as patch:
        Interrupt(patch, after=1)
        assert cli(source, "-o", out, "--model", tiny_alias, "--shard-size", SHARD) == 130
    saved = {p.name: p.read_bytes() for p in shard_dir_for(out).iterdir()}
    assert "shard-000000.npy" in saved
    return source, out, saved


def _unchanged(out, saved) -> bool:
    return {p.name: p.read_bytes() for p in shard_dir_for(out).iterdir()} == saved


def test_an_unfinished_run_is_never_reused_silently(interrupted, tiny_alias, monkeypatch, capsys):
    source, out, saved = interrupted
    assert cli(source, "-o", out, "--model", tiny_alias) == 2
    err = capsys.readouterr().err
    assert "unfinished run" in err and "--resume" in err and "--overwrite" in err
    assert _unchanged(out, saved)

    counter = Interrupt(monkeypatch, after=None)
    assert cli(source, "-o", out, "--model", tiny_alias, "--overwrite", "--shard-size", SHARD) == 0
    assert counter.rows == N_DOCS  # started over: every shard computed afresh
    assert read_vectors(out)[0].tolist() == list(range(N_DOCS))


@pytest.mark.parametrize(("change", "message"), [
    ("input", "input.sha256"),
    ("mode", "settings.mode"),
    ("prompt", "settings.prompt"),
    ("shard-size", "--shard-size 5"),
])
def test_resume_refuses_another_input_or_other_settings(interrupted, tiny_alias, capsys, change, message):
    source, out, saved = interrupted
    options = ["--model", tiny_alias, "--resume"]
    if change == "input":
        source.write_text(source.read_text().replace(DOCS[0], DOCS[0] + " edited", 1))
    elif change == "mode":
        options += ["--mode", "concat"]
    elif change == "prompt":
        options += ["--prompt", "query: {text}"]
    else:
        options += ["--shard-size", "5"]
    assert cli(source, "-o", out, *options) == 2
    assert message in capsys.readouterr().err
    assert _unchanged(out, saved) and not out.exists()


def test_resume_may_change_the_batching_only(interrupted, tiny_alias, expected):
    source, out, _ = interrupted
    assert cli(source, "-o", out, "--model", tiny_alias, "--resume", "--batch-size", "3",
               "--max-tokens-per-batch", "64") == 0
    ids, vectors = read_vectors(out)
    assert ids.tolist() == list(range(N_DOCS))
    assert np.abs(vectors - expected).max() < 1e-4


@pytest.mark.parametrize(("args", "message"), [
    (["{dir}/docs.txt", "-o", "{tmp}/out.csv"], "must end in one of"),
    (["{dir}/missing.txt", "-o", "{tmp}/out.npy"], "no such corpus file"),
    (["{dir}/docs.jsonl", "-o", "{tmp}/out.npy"], "no field 'text'"),
    (["{dir}/docs.csv", "-o", "{tmp}/out.npy", "--text-column", "nope"], "no column 'nope'"),
    (["{dir}/docs.txt", "-o", "{tmp}/out.npy", "--batch-size", "0"], "--batch-size must be a positive integer"),
    (["{dir}/docs.txt", "-o", "{tmp}/out.npy", "--shard-size", "-1"], "--shard-size must be a positive integer"),
    (["{dir}/docs.txt", "-o", "{tmp}/out.npy", "--resume", "--overwrite"], "choose one"),
    (["{dir}/docs.txt", "-o", "{tmp}/out.npy", "--model", "moee:no-such-alias-here"], "cannot load model"),
])
def test_bad_input_is_a_clear_error(corpus, tmp_path, args, message, capsys):
    argv = [a.format(dir=corpus, tmp=tmp_path) for a in args]
    assert cli(*argv) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written


def test_existing_output_and_foreign_directories_are_left_alone(corpus, tmp_path, capsys):
    out = tmp_path / "out.npy"
    out.write_bytes(b"precious")
    assert cli(corpus / "docs.txt", "-o", out) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == b"precious"
    foreign = shard_dir_for(out)
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert cli(corpus / "docs.txt", "-o", out, "--overwrite") == 2
    assert "not written by moee embed" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "mine" and out.read_bytes() == b"precious"


def test_shards_that_are_damaged_or_half_written_are_recomputed(tmp_path):
    out = tmp_path / "m.npy"
    sharded = ShardedOutput.create(out, num_rows=10, shard_size=4, dim=3, fingerprint={"input": {"a": 1}})
    rows = np.arange(30, dtype=np.float32).reshape(10, 3)
    for shard in sharded.pending():
        sharded.write(shard, rows[shard.start : shard.stop])
    np.save(sharded.directory / "shard-000001.npy", np.zeros((2, 3), np.float32))  # wrong shape
    (sharded.directory / "shard-000002.npy.tmp").write_bytes(b"half a shard")  # a write cut short
    again = ShardedOutput.open(out)
    assert [shard.index for shard in again.pending()] == [1]
    assert not list(again.directory.glob("*.tmp"))
    with pytest.raises(ShardError, match="not finished"):
        again.finish()
    again.write(again.shards()[1], rows[4:8])
    again.finish()
    assert np.array_equal(np.load(out), rows)
    with pytest.raises(ShardError, match=r"input.a: 1 \(interrupted run\) != 2"):
        ShardedOutput.create(out, num_rows=10, shard_size=4, dim=3, fingerprint={"input": {"a": 1}}).check(
            {"input": {"a": 2}})


def test_embed_is_listed_by_the_cli(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "embed" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- resume integrity
@pytest.fixture
def own_model(tiny_model_dir, tmp_path):
    """A private copy of the tiny model, free to be changed in place."""
    import shutil

    target = tmp_path / "model"
    shutil.copytree(tiny_model_dir, target)
    return target


def _interrupt_after(monkeypatch, source, out, model, after=1, *options) -> None:
    with monkeypatch.context() as patch:
        Interrupt(patch, after=after)
        assert cli(source, "-o", out, "--model", model, "--shard-size", SHARD, *options) == 130


@pytest.mark.parametrize("changed", ["weights", "tokenizer"])
def test_resume_refuses_when_the_model_files_changed_at_the_same_path(corpus, own_model, tmp_path, fast, monkeypatch,
                                                                      capsys, changed):
    out = tmp_path / "v.npy"
    _interrupt_after(monkeypatch, corpus / "docs.txt", out, own_model)
    if changed == "weights":  # other weights of the very same shapes and file size, at the same path
        from safetensors.numpy import load_file, save_file

        tensors = load_file(own_model / "model.safetensors")
        name = sorted(tensors)[0]
        tensors[name] = tensors[name] + np.float32(0.5)
        size = (own_model / "model.safetensors").stat().st_size
        save_file(tensors, own_model / "model.safetensors", metadata={"format": "pt"})
        assert (own_model / "model.safetensors").stat().st_size == size
    else:
        config = json.loads((own_model / "tokenizer_config.json").read_text())
        config["model_max_length"] = 77
        (own_model / "tokenizer_config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert cli(corpus / "docs.txt", "-o", out, "--model", own_model, "--resume") == 2
    err = capsys.readouterr().err
    changed_file = "model.safetensors" if changed == "weights" else "tokenizer_config.json"
    assert "cannot resume" in err and f"model_files.model.{changed_file}" in err and "--overwrite" in err
    assert not out.exists()


def test_resume_refuses_edited_statistics_in_the_manifest(interrupted, tiny_alias, capsys):
    source, out, _ = interrupted
    manifest_path = shard_dir_for(out) / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["statistics"]["hidden"]["mean"][0] += 1.0
    manifest_path.write_text(json.dumps(manifest))
    assert cli(source, "-o", out, "--model", tiny_alias, "--resume") == 2
    assert "statistics:" in capsys.readouterr().err


def _flip_a_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # inside the float32 payload, not the header: the shard still loads with the right shape
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flipped", "swapped", "nan", "unrecorded"])
def test_resume_recomputes_shards_that_do_not_match_their_checksum(corpus, tmp_path, tiny_alias, fast, expected,
                                                                    monkeypatch, caplog, damage):
    out = tmp_path / "v.npy"
    _interrupt_after(monkeypatch, corpus / "docs.txt", out, tiny_alias, 2)  # shards 0 and 1 (4 rows each) saved
    first, second = shard_dir_for(out) / "shard-000000.npy", shard_dir_for(out) / "shard-000001.npy"
    if damage == "flipped":
        _flip_a_byte(first)
    elif damage == "swapped":
        a, b = first.read_bytes(), second.read_bytes()
        first.write_bytes(b)
        second.write_bytes(a)
    elif damage == "nan":
        np.save(first, np.full((SHARD, expected.shape[1]), np.nan, np.float32))
    else:  # the run died between saving a shard and recording its checksum
        journal = shard_dir_for(out) / "checksums.jsonl"
        journal.write_text(journal.read_text().splitlines()[1] + "\n")
    counter = Interrupt(monkeypatch, after=None)
    assert cli(corpus / "docs.txt", "-o", out, "--model", tiny_alias, "--resume") == 0
    recomputed = {0, 1} if damage == "swapped" else {0}
    assert [d for shard in counter.shards for d in shard] == [d for k in sorted(recomputed)
                                                              for d in DOCS[k * SHARD:(k + 1) * SHARD]] + DOCS[2 * SHARD:]
    assert "it will be recomputed" in caplog.text
    assert np.abs(np.load(out) - expected).max() < 1e-4


def test_a_shard_damaged_during_the_run_is_recomputed_before_assembly(corpus, tmp_path, tiny_alias, fast, expected,
                                                                     monkeypatch, capsys):
    out = tmp_path / "v.npy"
    seen = []

    def encode_parts(embedder, texts, **kwargs):
        texts = list(texts)
        if texts == DOCS[-2:] and not seen:  # the last shard: damage the first one, already saved
            seen.append(1)
            _flip_a_byte(shard_dir_for(out) / "shard-000000.npy")
        return ENCODE_PARTS(embedder, texts, **kwargs)

    monkeypatch.setattr(MoEEmbedder, "encode_parts", encode_parts)
    assert cli(corpus / "docs.txt", "-o", out, "--model", tiny_alias, "--shard-size", SHARD) == 0
    assert seen and "changed on disk" in capsys.readouterr().err
    assert np.abs(np.load(out) - expected).max() < 1e-4


def test_finish_refuses_a_damaged_shard_and_write_refuses_non_finite_rows(tmp_path):
    out = tmp_path / "m.parquet"
    sharded = ShardedOutput.create(out, num_rows=10, shard_size=4, dim=3, fingerprint={"input": {"a": 1}})
    rows = np.arange(30, dtype=np.float32).reshape(10, 3)
    bad = rows[:4].copy()
    bad[2, 1] = np.inf
    with pytest.raises(ShardError, match=r"documents \[2\] got non-finite vectors; nothing was written"):
        sharded.write(sharded.shards()[0], bad)
    assert not sharded.path(sharded.shards()[0]).exists()
    for shard in sharded.shards():
        sharded.write(shard, rows[shard.start : shard.stop])
    _flip_a_byte(sharded.path(sharded.shards()[2]))
    with pytest.raises(ShardError, match="shard 2 does not match its recorded checksum"):
        ShardedOutput.open(out).finish()
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()


# ---------------------------------------------------------------------------------------------- streaming, paths, ids
def test_the_input_is_streamed_one_shard_at_a_time(corpus, tmp_path, tiny_alias, fast, expected, monkeypatch):
    import moee_plugins.io.corpus as corpus_module

    read = {"records": 0}
    original = corpus_module.iter_records

    def counting(*args, **kwargs):
        read["records"] = 0  # a new pass over the input (the first one only counts and checks the documents)
        for record in original(*args, **kwargs):
            read["records"] += 1
            yield record

    def encode_parts(embedder, texts, **kwargs):
        texts = list(texts)
        if texts and texts[0] == DOCS[SHARD * (len(shards))] and len(texts) <= SHARD:
            # the reader is never more than this shard ahead of the shard being embedded
            assert read["records"] <= SHARD * (len(shards) + 1)
            shards.append(len(texts))
        return ENCODE_PARTS(embedder, texts, **kwargs)

    shards: list[int] = []
    monkeypatch.setattr(corpus_module, "iter_records", counting)
    monkeypatch.setattr("moee_plugins.io.iter_records", counting)
    monkeypatch.setattr(MoEEmbedder, "encode_parts", encode_parts)
    out = tmp_path / "v.npy"
    assert cli(corpus / "docs.jsonl", "-o", out, "--model", tiny_alias, "--shard-size", SHARD, "--text-field",
               "body") == 0
    assert len(shards) == 6
    assert np.abs(np.load(out) - expected).max() < 1e-4


@pytest.mark.parametrize("output", ["{file}/out.npy", "{long}.npy"])
def test_an_impossible_output_path_fails_before_the_model_loads(corpus, tmp_path, output, monkeypatch, capsys):
    (tmp_path / "a-file").write_text("not a folder")
    target = output.format(file=tmp_path / "a-file", long=tmp_path / ("x" * 300))

    def no_model(args):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(embed_command, "build_embedder", no_model)
    assert cli(corpus / "docs.txt", "-o", target) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("moee embed: error: cannot ") and "--output" in err


@pytest.mark.parametrize("suffix", [".parquet", ".npy"])
def test_id_field_on_the_local_engine(corpus, tmp_path, tiny_alias, fast, expected, monkeypatch, suffix):
    source = tmp_path / "docs.jsonl"
    with source.open("w", encoding="utf-8") as handle:
        for i, doc in enumerate(DOCS):
            handle.write(json.dumps({"key": f"doc-{i:02d}", "body": doc}) + "\n")
    out = tmp_path / f"v{suffix}"
    _interrupt_after(monkeypatch, source, out, tiny_alias, 1, "--text-field", "body", "--id-field", "key")
    assert cli(source, "-o", out, "--model", tiny_alias, "--resume", "--text-field", "body", "--id-field", "key") == 0
    ids, vectors = read_vectors(out)
    assert ids.tolist() == [f"doc-{i:02d}" for i in range(N_DOCS)]
    assert np.abs(vectors - expected).max() < 1e-4
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        assert str(pq.read_schema(out).field("id").type) == "string"


def test_integer_ids_from_parquet_and_a_missing_id_field(corpus, tmp_path, tiny_alias, fast, capsys):
    import pandas as pd

    source = tmp_path / "docs.parquet"
    pd.DataFrame({"content": DOCS, "n": [100 + i for i in range(N_DOCS)]}).to_parquet(source)
    out = tmp_path / "v.parquet"
    assert cli(source, "-o", out, "--model", tiny_alias, "--text-column", "content", "--id-field", "n") == 0
    assert read_vectors(out)[0].tolist() == [100 + i for i in range(N_DOCS)]
    assert cli(source, "-o", tmp_path / "w.npy", "--text-column", "content", "--id-field", "nope") == 2
    assert "no column 'nope'; columns: ['content', 'n'] (choose another with --id-field)" in capsys.readouterr().err
