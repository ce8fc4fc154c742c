"""Corpora of any size: many files, the memory-mapped id cache, bounded validation, and
the corpus-reading faults (byte-order marks, UTF-16, non-text codecs, closed stdin, ...)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_configs, tiny_run
from test_faults import TINY, assert_error, file_bytes, invoke

import charrnn.training.budget
from charrnn import idcache, sources
from charrnn.batches import make_streams
from charrnn.checkpoint import load_checkpoint, save_checkpoint
from charrnn.config import ModelConfig
from charrnn.corpus import Text, build_corpus, corpus_from_prepared
from charrnn.rundir import RunDir
from charrnn.training import Notice, RunStarted, evaluate, evaluate_segments, train, val_segments
from charrnn.vocab import encode_array

TEXT = "the quick brown fox jumps over the lazy dog; déjà vu, naïve café. " * 30


def prepare(paths, tmp: Path, encoding="utf-8", notices=None):
    found = sources.resolve([str(p) for p in paths], sources.check_encoding(encoding))
    return idcache.prepare(
        found, sources.check_encoding(encoding), str(tmp / "cache"), on_notice=notices
    )


# ------------------------------------------------------------ the id cache is exact


@pytest.mark.parametrize(
    ("text", "chunk"),
    [
        pytest.param("plain ascii text, nothing else.\n" * 20, 7, id="ascii"),
        pytest.param("naïve café — 🙂 ok\n" * 20, 7, id="unicode"),
        # more than 128 non-ASCII characters: the provisional file is widened part-way
        pytest.param("abc " * 50 + "".join(chr(0x400 + i) for i in range(300)) * 3, 7, id="wide"),
        pytest.param("".join(chr(0x20000 + i) for i in range(40000)), 4099, id="int32-vocab"),
    ],
)
def test_prepared_ids_equal_encoding_the_text_at_once(tmp_path, monkeypatch, text, chunk):
    # Small chunks cut characters (and files) in many places.
    monkeypatch.setattr(sources, "CHUNK_BYTES", chunk)
    half = len(text) // 2
    (tmp_path / "a.txt").write_text(text[:half], encoding="utf-8")
    (tmp_path / "b.txt").write_text(text[half:], encoding="utf-8")
    prepared = prepare([tmp_path / "a.txt", tmp_path / "b.txt"], tmp_path)
    vocab, ids = encode_array(text)
    assert prepared.vocab == vocab and not prepared.cached
    assert prepared.ids.dtype == ids.dtype and torch.equal(prepared.ids, ids)
    again = prepare([tmp_path / "a.txt", tmp_path / "b.txt"], tmp_path)
    assert again.cached and torch.equal(again.ids, ids) and again.digest == prepared.digest


def test_training_streams_are_views_of_the_mapped_file(tmp_path):
    (tmp_path / "c.txt").write_text(TEXT)
    prepared = prepare([tmp_path / "c.txt"], tmp_path)
    corpus = corpus_from_prepared(prepared, "c", 0.1, 65)
    streams = make_streams(corpus.train, 4, 16)
    mapped = prepared.ids.untyped_storage().data_ptr()
    # Same storage as the mapping: nothing was copied into memory.
    assert corpus.train.untyped_storage().data_ptr() == mapped
    assert streams.inputs.untyped_storage().data_ptr() == mapped


def test_a_file_rewritten_in_place_with_the_same_size_and_mtime_is_never_served_stale(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text(TEXT)
    first = prepare([path], tmp_path)
    stat = path.stat()
    path.write_text(TEXT[::-1])  # same size, same characters, other text
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    second = prepare([path], tmp_path)
    assert second.digest != first.digest and not second.cached
    assert second.vocab.decode(second.ids.tolist()) == TEXT[::-1]


@pytest.mark.parametrize("damage", ["truncate", "flip", "bad-json"])
def test_a_truncated_or_damaged_cache_entry_is_rebuilt_not_trusted(tmp_path, damage):
    path = tmp_path / "c.txt"
    path.write_text(TEXT)
    first = prepare([path], tmp_path)
    ids_file = Path(first.path)
    data = bytearray(ids_file.read_bytes())
    del first
    if damage == "truncate":
        ids_file.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        data[100] ^= 0x01
        ids_file.write_bytes(data)
    else:
        ids_file.with_suffix(".json").write_text("{not json")
    notices = []
    again = prepare([path], tmp_path, notices=notices.append)
    assert not again.cached and len(notices) == 1 and "rebuilding" in notices[0]
    assert again.vocab.decode(again.ids.tolist()) == TEXT
    assert prepare([path], tmp_path).cached  # and the rebuilt entry is good


# ----------------------------------------------------------- many files, folders


def test_a_folder_is_its_text_files_in_sorted_order_non_text_skipped_with_one_notice(tmp_path):
    folder = tmp_path / "books"
    (folder / "b").mkdir(parents=True)
    (folder / "b" / "2.txt").write_text("second part. ")
    (folder / "a.txt").write_text("first part. ")
    (folder / "c.md").write_text("third part.")
    (folder / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (folder / "archive.gz").write_bytes(b"\x1f\x8b\x08" + bytes(range(128, 256)) * 8)
    (folder / ".hidden.txt").write_text("never read")
    found = sources.resolve([str(folder)], "utf-8")
    assert [Path(s.path).relative_to(folder).as_posix() for s in found.files] == [
        "a.txt",
        "b/2.txt",
        "c.md",
    ]
    assert len(found.notices) == 1 and "skipped 2 file(s)" in found.notices[0]
    prepared = idcache.prepare(found, "utf-8", str(tmp_path / "cache"))
    assert prepared.vocab.decode(prepared.ids.tolist()) == "first part. second part. third part."
    assert [f["size"] for f in prepared.files] == [12, 13, 11]


def test_training_on_a_folder_records_its_files_in_the_checkpoint_and_info(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "one.txt").write_text(TEXT[:1000])
    (folder / "two.txt").write_text(TEXT[1000:])
    out = tmp_path / "out"
    result = invoke("train", folder, "--out", out, *TINY, "--max-steps", "2", "--quiet")
    assert result.exit_code == 0, result.output
    corpus = load_checkpoint(str(out / "last.pt"))["corpus"]
    assert [(Path(f["name"]).name, f["size"]) for f in corpus["files"]] == [
        ("one.txt", len(TEXT[:1000].encode())),
        ("two.txt", len(TEXT[1000:].encode())),
    ]
    info = invoke("info", out / "last.pt")
    assert "files        2: " in info.stdout and "one.txt (1,060 bytes)" in info.stdout
    as_json = json.loads(invoke("info", out / "last.pt", "--json").stdout)
    assert len(as_json["corpus"]["files"]) == 2


# ------------------------------------------------------------ bounded validation


def test_validation_is_bounded_to_evenly_spaced_segments(tmp_path):
    ids = torch.arange(200_000) % 50
    assert val_segments(ids, 200_000) is None  # within the bound: the whole text
    rows = val_segments(ids, 40_000)
    assert rows.shape == (2, 20_001)  # 40,000 predictions in two streams
    assert rows[0, 0] == ids[0] and rows[-1, -1] == ids[-1]  # from the start to the end
    huge = torch.zeros(2**25 + 12345, dtype=torch.uint8)  # beyond float32's exact integers
    assert val_segments(huge, 500_000).shape == (30, 16_667)
    model = torch.nn.Module()  # a model that predicts uniformly: loss ln(V) whatever it sees
    model.forward = lambda x, h: (torch.zeros(*x.shape, 50), h)  # type: ignore[method-assign]
    model.config = ModelConfig(vocab_size=50)  # evaluation sizes its chunks by V
    loss, cols = evaluate_segments(model, rows, torch.device("cpu"))
    assert cols == 20_000
    assert (
        loss
        == pytest.approx(evaluate(model, ids, torch.device("cpu")))
        == pytest.approx(torch.log(torch.tensor(50.0)).item())
    )


def test_a_run_reports_how_many_held_out_characters_it_validates_on(tmp_path):
    events = []
    text = (TEXT * 5)[:8000]  # 800 held out
    tiny_run(text, str(tmp_path / "all"), on_event=events.append, max_steps=2, eval_every=2)
    started = next(e for e in events if isinstance(e, RunStarted))
    assert started.val_chars == 800 and started.val_used == 799
    events.clear()
    tiny_run(text, str(tmp_path / "b"), on_event=events.append, max_steps=2, val_chars=300)
    started = next(e for e in events if isinstance(e, RunStarted))
    assert started.val_used == 300
    metrics = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(metrics[-1])["val_chars"] == 300


def test_a_time_limited_validation_is_fitted_to_the_limit_once(tmp_path, monkeypatch):
    # No time at all for validating: the first validation keeps only its first chunk.
    monkeypatch.setattr(charrnn.training.budget, "VAL_TIME_SHARE", 0.0)
    events = []
    text = (TEXT * 30)[:50_000]  # 5,000 held out; at most 4,000 used: one 4,000-long segment
    out = tmp_path / "o"
    tiny_run(text, str(out), on_event=events.append, max_steps=30, eval_every=25,
             val_chars=4000, time_limit=600.0)  # fmt: skip
    notices = [e.message for e in events if isinstance(e, Notice)]
    assert len(notices) == 1 and "256 held-out characters instead of 4,000" in notices[0]
    used = [json.loads(line)["val_chars"] for line in (out / "metrics.jsonl").open()]
    assert len(used) >= 2 and set(used) == {256}  # every validation scores the same


def test_time_limit_counts_from_the_commands_start(tmp_path):
    # A command that began 100 s ago with a 60 s limit has no time left to train.
    model_config, config = tiny_configs(max_steps=None, time_limit=60.0)
    corpus = build_corpus(Text(TEXT, "t"), 0.1, 65)
    model_config = ModelConfig(**{**model_config.to_dict(), "vocab_size": len(corpus.vocab)})
    run_dir = RunDir(str(tmp_path / "o"))
    run_dir.prepare(resume=False, force=True)
    events = []
    started = time.perf_counter() - 100
    result = train(model_config, config, corpus, run_dir, events.append, started=started)
    assert result.step == 0 and result.stop_reason == "time_limit"
    # Nor time to validate: the validation is skipped, said once, and last.pt saved without it.
    notices = [e.message for e in events if isinstance(e, Notice)]
    assert len(notices) == 1 and "out of time" in notices[0]
    assert load_checkpoint(run_dir.last)["history"] == []


# ------------------------------------------------------------------- bad input


def test_a_folder_with_no_text_files_is_refused(tmp_path):
    folder = tmp_path / "pictures"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00" + bytes(range(256)))
    result = invoke("train", folder, "--out", tmp_path / "out", *TINY)
    assert_error(result, 1, "holds no text files", "1 non-text file(s) skipped")
    assert not (tmp_path / "out" / "last.pt").exists()


def test_an_unreadable_file_inside_a_folder_is_named(tmp_path, monkeypatch):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text(TEXT)
    (folder / "secret.txt").write_text(TEXT)
    real_open = open

    def guarded(path, *args, **kwargs):  # chmod 000 does not stop root: refuse it here
        if str(path).endswith("secret.txt"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(sources, "open", guarded, raising=False)
    result = invoke("train", folder, "--out", tmp_path / "out", *TINY)
    assert_error(result, 1, "secret.txt", "permission denied")


def test_a_file_in_another_encoding_names_the_file_and_the_byte_offset(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text(TEXT)
    (folder / "b.txt").write_bytes(b"plain words " * 10 + "déjà".encode("latin-1"))
    result = invoke("train", folder, "--out", tmp_path / "out", *TINY)
    assert_error(result, 1, "b.txt", "byte offset 121", "--encoding")


def test_an_unwritable_cache_folder_is_an_error_line(tmp_path, monkeypatch):
    (tmp_path / "c.txt").write_text(TEXT)

    def denied(*args, **kwargs):  # what a read-only folder does (root ignores chmod)
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(idcache.tempfile, "mkstemp", denied)
    out = tmp_path / "out"
    cache = tmp_path / "cache"
    result = invoke("train", tmp_path / "c.txt", "--out", out, "--cache-dir", cache, *TINY)
    assert_error(result, 1, "cannot write the id cache", "permission denied", "--cache-dir")
    assert not (out / "last.pt").exists()
    (tmp_path / "a-file").write_text("x")
    result = invoke("train", tmp_path / "c.txt", "--out", out, "--cache-dir", tmp_path / "a-file")
    assert_error(result, 1, "is a file, not a folder", "--cache-dir")


def test_a_full_disk_while_writing_the_cache_leaves_nothing_half_written(tmp_path, monkeypatch):
    (tmp_path / "c.txt").write_text(TEXT)
    monkeypatch.setattr(sources, "CHUNK_BYTES", 256)
    real_write = idcache._Provisional._write
    calls = []

    def full(self, data):
        calls.append(1)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, data)

    monkeypatch.setattr(idcache._Provisional, "_write", full)
    cache = tmp_path / "cache"
    args = ("train", tmp_path / "c.txt", "--out", tmp_path / "out", "--cache-dir", cache, *TINY)
    assert_error(invoke(*args), 1, "no space left", "id cache")
    assert list(cache.iterdir()) == []  # no temporary file, no entry to trust later
    monkeypatch.setattr(idcache._Provisional, "_write", real_write)
    result = invoke(*args, "--max-steps", "1", "--quiet", "--force")
    assert result.exit_code == 0, result.output


@pytest.fixture
def saved(tmp_path) -> tuple[Path, Path]:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    out = tmp_path / "run"
    result = invoke("train", corpus, "--out", out, *TINY, "--max-steps", "2", "--quiet")
    assert result.exit_code == 0, result.output
    return corpus, out


@pytest.mark.parametrize("change", ["reversed", "doubled"])
def test_resume_with_the_same_characters_in_another_text_is_refused(saved, change):
    corpus, out = saved
    before = file_bytes(out)
    corpus.write_text(TEXT[::-1] if change == "reversed" else TEXT * 2)
    result = invoke("train", corpus, "--out", out, "--resume", "--max-steps", "4")
    line = assert_error(result, 1, "does not match the text the run was trained on")
    assert ("different content" in line) if change == "reversed" else ("characters then" in line)
    assert file_bytes(out) == before


def test_a_checkpoint_without_a_corpus_digest_still_resumes(saved):
    corpus, out = saved
    ckpt = load_checkpoint(str(out / "last.pt"))
    for key in ("digest", "key", "files"):  # as written before the digest existed
        del ckpt["corpus"][key]
    save_checkpoint(ckpt, str(out / "last.pt"))
    result = invoke("train", corpus, "--out", out, "--resume", "--max-steps", "3", "--quiet")
    assert result.exit_code == 0, result.output
    assert load_checkpoint(str(out / "last.pt"))["step"] == 3


def test_a_byte_order_mark_is_dropped_and_said_once(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"\xef\xbb\xbf" + TEXT.encode())
    (folder / "b.txt").write_bytes(b"\xef\xbb\xbf" + TEXT.encode())
    out = tmp_path / "out"
    result = invoke("train", folder, "--out", out, *TINY, "--max-steps", "1", "--quiet")
    assert result.exit_code == 0, result.output
    warnings = [ln for ln in result.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "byte-order mark" in warnings[0] and "2 files" in warnings[0]
    ckpt = load_checkpoint(str(out / "last.pt"))
    assert "\ufeff" not in ckpt["vocab"] and ckpt["corpus"]["first_char"] == "t"
    scored = invoke("eval", folder / "a.txt", "-c", out / "last.pt", "--json")
    assert json.loads(scored.stdout)["num_chars"] == len(TEXT)


@pytest.mark.parametrize("codec", ["rot13", "base64", "hex"])
def test_a_codec_that_is_not_a_text_encoding_is_a_usage_error_and_leaves_no_lock(tmp_path, codec):
    (tmp_path / "c.txt").write_text(TEXT)
    out = tmp_path / "out"
    result = invoke("train", tmp_path / "c.txt", "--out", out, *TINY, "--encoding", codec)
    assert_error(result, 2, f"--encoding {codec!r} is not a text encoding")
    assert not out.exists()  # refused before the folder was created or locked
    result = invoke("eval", tmp_path / "c.txt", "-c", "whatever.pt", "--encoding", codec)
    assert result.exit_code in (1, 2) and "Traceback" not in result.output


def test_a_lone_surrogate_is_a_corpus_error(tmp_path):
    path = tmp_path / "u7.txt"
    path.write_bytes(b"some plain words " * 20 + b"+2AA-")
    result = invoke("train", path, "--out", tmp_path / "out", *TINY, "--encoding", "utf-7")
    assert_error(result, 1, "lone surrogate", "U+D800", "--encoding")


def test_closed_stdin_is_an_error_line_for_train_and_eval(tmp_path, saved):
    _, out = saved
    commands = (
        ["train", "-", "--out", str(tmp_path / "o")],
        ["eval", "-", "-c", str(out / "last.pt")],
    )
    procs = [  # both at once: each subprocess spends most of its time importing torch
        subprocess.Popen(
            [sys.executable, "-m", "charrnn", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: os.close(0),  # as `<&-` does
        )
        for args in commands
    ]
    for proc in procs:
        _, stderr = proc.communicate(timeout=90)
        assert proc.returncode == 1 and "Traceback" not in stderr, stderr
        errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and "stdin is closed" in errors[0], stderr


def test_eval_of_an_empty_file_does_not_call_it_a_corpus(saved):
    _, out = saved
    line = assert_error(invoke("eval", "/dev/null", "-c", out / "last.pt"), 1, "/dev/null")
    assert "empty" in line and "score" in line
    assert "corpus" not in line and "learn from" not in line


def test_a_symlink_loop_is_not_called_missing(tmp_path):
    loop = tmp_path / "loop.txt"
    loop.symlink_to(loop)
    line = assert_error(invoke("train", loop, "--out", tmp_path / "out", *TINY), 1, "loop")
    assert "not found" not in line


@pytest.mark.parametrize(
    ("codec", "hint"), [("utf-16", "--encoding utf-16"), ("utf-16-le", "--encoding utf-16-le")]
)
@pytest.mark.parametrize("command", ["train", "eval"])
def test_utf16_text_without_encoding_suggests_it(tmp_path, saved, codec, hint, command):
    path = tmp_path / "wide.txt"
    path.write_bytes(TEXT.encode(codec))
    if command == "train":
        result = invoke("train", path, "--out", tmp_path / "out", *TINY)
    else:
        result = invoke("eval", path, "-c", saved[1] / "last.pt")
    assert_error(result, 1, "UTF-16", hint)
