"""``hf-multitask predict``: a small TSV / JSONL in, the expected JSON lines out; malformed
input files fail with one line naming the file and line."""

import json
import shutil
import subprocess
import sys

import pytest
from test_pipeline import SENTENCES, _model

import hf_multitask as hm
from hf_multitask.cli import InputError, read_inputs


@pytest.fixture
def folder(tmp_path, tokenizer):
    model = _model()
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def _cli(*args):
    """The installed console script in a real process (what users run)."""
    exe = shutil.which("hf-multitask")
    cmd = [exe] if exe else [sys.executable, "-m", "hf_multitask.cli"]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=300)


def _cli_in_process(capsys, *args) -> tuple[int, str]:
    """``hf_multitask.cli.main`` in this process (exit status, stderr): the error paths, without
    paying a process start for each."""
    from hf_multitask.cli import main

    try:
        main([str(a) for a in args])
        status = 0
    except SystemExit as exit_:
        status = exit_.code
    return status, capsys.readouterr().err


def test_predict_writes_one_json_line_per_example(folder, tmp_path, capsys):
    tsv = tmp_path / "in.tsv"
    tsv.write_text("id\ttext\ttext_b\n" + "".join(f"s{i}\t{s}\t\n" for i, s in enumerate(SENTENCES)) + "p0\tthe cat runs\ta cat runs\n")
    out = tmp_path / "out.jsonl"
    proc = _cli("predict", "--model", folder, "--input", tsv, "--output", out, "--batch_size", "2")
    assert proc.returncode == 0, proc.stderr
    assert "Predicting" in proc.stderr, "a progress bar"
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["s0", "s1", "s2", "p0"]
    pipe = hm.MultitaskModel.from_pretrained(folder).pipeline(__import__("transformers").AutoTokenizer.from_pretrained(folder))
    expected = pipe([*SENTENCES, ("the cat runs", "a cat runs")])
    for row, answer in zip(rows, expected):
        assert set(row["answers"]) == set(answer)
        for task in answer:
            got, want = row["answers"][task], answer[task]
            if isinstance(want, dict) and "value" in want:
                assert got["value"] == pytest.approx(want["value"], rel=1e-5, abs=1e-6)
            elif isinstance(want, dict):
                assert got["label" if "label" in want else "choice"] == want["label" if "label" in want else "choice"]
            else:
                assert [w["tag"] for w in got] == [w["tag"] for w in want]
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text(json.dumps({"id": "q", "inputs": {"mc": {"context": "the cat", "choices": ["runs", "eats"]}}}) + "\n")
    assert _cli_in_process(capsys, "predict", "--model", folder, "--input", jsonl, "--output", tmp_path / "o2.jsonl", "--quiet")[0] == 0
    assert set(json.loads((tmp_path / "o2.jsonl").read_text())["answers"]) == {"mc"}


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ("id\tsentence\nx\thello\n", ".tsv", "has no 'text' column"),
        ("id\ttext\nx\thello\textra\n", ".tsv", "line 2: 3 fields, the header has 2"),
        ('id\ttext\nx\t"hello\n', ".tsv", "line 2: malformed quoting"),
        ('{"id": 1, "text": "ok"}\n{"id": 2, "text": \n', ".jsonl", "line 2, column 19: not valid JSON"),
        ('{"id": 1, "text": ""}\n', ".jsonl", "line 1: no text"),
    ],
)
def test_malformed_input_files_are_refused_with_the_line(tmp_path, content, suffix, message):
    path = tmp_path / f"bad{suffix}"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        list(read_inputs(path))


def test_the_command_reports_a_bad_file_in_one_line_and_writes_nothing(folder, tmp_path, capsys):
    path = tmp_path / "bad.tsv"
    path.write_text("id\ttext\nx\thello\textra\n")
    status, err = _cli_in_process(capsys, "predict", "--model", folder, "--input", path, "--output", tmp_path / "o.jsonl")
    assert status == 2 and "bad.tsv: line 2: 3 fields, the header has 2" in err and "Traceback" not in err
    assert not (tmp_path / "o.jsonl").exists(), "nothing is written for a bad input file"


@pytest.mark.parametrize("suffix", [".tsv", ".jsonl"])
def test_a_latin1_input_stops_the_real_command_in_one_line_with_status_2(folder, tmp_path, suffix):
    """End to end, in a real process: no traceback, the file and line named, no output left behind."""
    import os

    path = tmp_path / f"in{suffix}"
    text = "id\ttext\nx\thello\ny\tcafé au lait\n" if suffix == ".tsv" else '{"id": "x", "text": "hi"}\n{"id": "y", "text": "café"}\n'
    path.write_bytes(text.encode("latin-1"))
    out = tmp_path / "o.jsonl"
    proc = subprocess.run([sys.executable, "-m", "hf_multitask.cli", "predict", "--model", str(folder), "--input", str(path),
                           "--output", str(out), "--quiet"], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    line = 3 if suffix == ".tsv" else 2
    assert f"in{suffix}: line {line}, column " in lines[0] and "not UTF-8" in lines[0]
    assert not out.exists() and not list(tmp_path.glob("o.jsonl*")), "no partial output file"


def test_a_task_that_cannot_answer_is_an_error_naming_the_examples(folder, tmp_path, capsys):
    tsv = tmp_path / "in.tsv"
    tsv.write_text("id\ttext\nx\thello\n")
    status, err = _cli_in_process(capsys, "predict", "--model", folder, "--input", tsv, "--output", tmp_path / "o.jsonl", "--tasks", "para")
    assert status == 2 and "example x:" in err and "cannot answer" in err
    assert not list(tmp_path.glob("o.jsonl*")), "a run stopped half-way leaves no partial output"


def test_predict_dtype_bfloat16_runs_under_autocast_and_agrees_with_fp32(folder, tmp_path, capsys, monkeypatch):
    """Issue 44: `--dtype bfloat16` predicts under bf16 autocast (the pipeline's `autocast_dtype`), close
    to fp32; a dtype it does not know, or bf16 on a CPU without bf16 instructions, is refused by flag."""
    import torch

    from hf_multitask import precision

    tsv = tmp_path / "in.tsv"
    tsv.write_text("id\ttext\n" + "".join(f"s{i}\t{s}\n" for i, s in enumerate(SENTENCES)))
    seen = []
    real = torch.autocast

    def spy(device_type, dtype=None, **kw):
        seen.append((device_type, dtype))
        return real(device_type, dtype=dtype, **kw)

    monkeypatch.setattr(torch, "autocast", spy)
    outs = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / f"{dtype}.jsonl"
        assert _cli_in_process(capsys, "predict", "--model", folder, "--input", tsv, "--output", out, "--quiet", "--dtype", dtype)[0] == 0
        outs[dtype] = [json.loads(line)["answers"] for line in out.read_text().splitlines()]
    assert seen and all(s == ("cpu", torch.bfloat16) for s in seen), "fp32 runs without autocast, bf16 under it"
    for fp32, bf16 in zip(outs["float32"], outs["bfloat16"]):
        assert fp32["score"]["value"] == pytest.approx(bf16["score"]["value"], abs=0.05)
    status, err = _cli_in_process(capsys, "predict", "--model", folder, "--input", tsv, "--output", tmp_path / "x", "--dtype", "fp8")
    assert status == 2 and "--dtype: unknown dtype 'fp8'" in err
    monkeypatch.delenv(precision.ALLOW_SLOW_BF16)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda cpuinfo=None: False)
    status, err = _cli_in_process(capsys, "predict", "--model", folder, "--input", tsv, "--output", tmp_path / "x", "--dtype", "bf16")
    assert status == 2 and "--dtype bfloat16 on this CPU: it has no bf16 instructions" in err and not (tmp_path / "x").exists()


def test_predict_and_evaluate_take_a_dtype(folder, tokenizer):
    import torch

    model = hm.MultitaskModel.from_pretrained(folder)
    spec = model.get_task("senti")
    data = hm.encode_task(
        __import__("datasets").Dataset.from_dict({"id": ["a", "b"], spec.text_columns[0]: SENTENCES[:2]}), spec, tokenizer
    )
    fp32 = hm.predict(model, data, "senti", progress=False)
    bf16 = hm.predict(model, data, "senti", progress=False, dtype=torch.bfloat16)
    assert fp32.ids == bf16.ids and len(bf16.predictions) == 2
    assert next(model.parameters()).dtype == torch.float32, "the weights stay fp32"


def test_a_row_without_text_b_is_a_single_text_and_the_command_says_so(folder, tmp_path, capsys):
    """A pair file whose row lost its second text: that row is a single text, answered by the
    single-text tasks. The command notes how many such rows a mixed file has (it said nothing),
    and --tasks naming the pair tasks makes such a row an error naming it."""
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("id\ttext\ttext_b\np0\tthe cat runs\ta cat runs\np1\tdogs see\t\n")
    status, err = _cli_in_process(capsys, "predict", "--model", folder, "--input", tsv, "--output", tmp_path / "o.jsonl", "--quiet")
    assert status == 0 and "1 of 2 examples" in err and "have no text_b: they are single texts" in err
    answers = [json.loads(line)["answers"] for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert set(answers[0]) == {"para"} and set(answers[1]) == {"senti", "score", "pos"}
    status, err = _cli_in_process(capsys, "predict", "--model", folder, "--input", tsv, "--output", tmp_path / "p.jsonl", "--tasks", "para")
    assert status == 2 and "example p1" in err and "tasks ['para'] cannot answer 'dogs see'" in err, err


@pytest.mark.parametrize("sep, suffix", [("\t", ".tsv"), (",", ".csv")])
def test_a_text_b_of_spaces_is_an_empty_one(sep, suffix, tmp_path):
    """A row whose text_b holds only spaces is a single text, as one whose text_b is empty (it
    was a pair with a blank second text)."""
    path = tmp_path / f"in{suffix}"
    path.write_text(sep.join(["id", "text", "text_b"]) + "\n" + "".join(sep.join(r) + "\n" for r in
                    [["p0", "the cat", "a cat"], ["s0", "the cat", "   "], ["s1", "the cat", ""], ["s2", "dogs see", " "]]))  # fmt: skip
    assert list(read_inputs(path)) == [("p0", ("the cat", "a cat")), ("s0", "the cat"), ("s1", "the cat"), ("s2", "dogs see")]


@pytest.mark.parametrize("value", ["0", "-3"])
@pytest.mark.parametrize("command", ["predict", "tweeteval-test"])
def test_max_length_below_one_is_a_parser_error_naming_the_flag(command, value, folder, tmp_path, capsys):
    """0 was taken as 'the training length' and -3 ended in a raw OverflowError from the tokenizer."""
    tsv = tmp_path / "in.tsv"
    tsv.write_text("id\ttext\nx\thello\n")
    where = (
        ["--input", tsv, "--output", tmp_path / "o.jsonl"]
        if command == "predict"
        else ["--data-dir", tmp_path, "--output-dir", tmp_path / "o"]
    )
    status, err = _cli_in_process(capsys, command, "--model", folder, *where, "--max_length", value)
    assert status == 2 and f"argument --max_length: must be at least 1 token, got {int(value)}" in err and "Traceback" not in err
    assert not list(tmp_path.glob("o*")), "nothing ran"


def test_quiet_silences_the_libraries_progress_bars_too_and_restores_them(tmp_path, tokenizer, capsys):
    """``--quiet`` printed datasets' "Tokenising ..." and transformers' "Loading weights" bars
    (``tweeteval-test`` tokenises through datasets): it now silences them for the command and
    leaves them on for the rest of the process."""
    from datasets.utils import logging as ds_logging
    from test_onnx import _model as tiny
    from transformers.utils import logging as hf_logging
    from tweeteval_fixtures import write_tweeteval

    from hf_multitask import tweeteval as te

    (tmp_path / "tweeteval").mkdir()
    data = write_tweeteval(tmp_path / "tweeteval")
    model = tiny(tasks=[te.tweeteval_task(t, data) for t in ("irony", "stance")])
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    args = ["tweeteval-test", "--model", tmp_path / "m", "--data-dir", data, "--output-dir", tmp_path / "out"]
    status, err = _cli_in_process(capsys, *args)
    assert status == 0 and "Tokenising irony" in err, "without --quiet the bars show (else this test proves nothing)"
    status, err = _cli_in_process(capsys, *args, "--quiet")
    assert status == 0 and "%|" not in err and "Tokenising" not in err and "Loading weights" not in err, err
    assert ds_logging.is_progress_bar_enabled() and hf_logging.is_progress_bar_enabled(), "the bars are back for the caller"


def test_quiet_leaves_huggingface_hubs_own_progress_bar_settings_as_it_found_them(folder, tmp_path, capsys):
    """transformers' switch resets huggingface_hub's bars (global and per group): a caller that had
    turned the hub's download bars off got them back from a --quiet call, on success or error."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    tsv = tmp_path / "in.tsv"
    tsv.write_text("id\ttext\nx\thello\n")
    try:
        disable_progress_bars("huggingface_hub.http_get")
        for inputs in (tsv, tmp_path / "missing.tsv"):  # a success, then an error (exit 2)
            _cli_in_process(capsys, "predict", "--model", folder, "--input", inputs, "--output", tmp_path / "o.jsonl", "--quiet")
            assert are_progress_bars_disabled("huggingface_hub.http_get") and not are_progress_bars_disabled(), inputs
        disable_progress_bars()
        _cli_in_process(capsys, "predict", "--model", folder, "--input", tsv, "--output", tmp_path / "o.jsonl", "--quiet")
        assert are_progress_bars_disabled(), "the hub's bars stay off globally"
    finally:
        enable_progress_bars()


def test_predict_batches_texts_by_their_tokens_not_their_characters(tokenizer):
    """Tweets' characters follow their tokens poorly (URLs, emoji, hashtags): batches sorted by characters padded
    TweetEval's emoji tweets to 1.37x their tokens. Texts and pairs are sorted by their tokens,
    any other input after them by its characters, each window on its own."""
    from hf_multitask.cli import _by_length

    long_word = "€" * 40  # 40 characters, one token ([UNK]); the test vocabulary has a token per letter
    inputs = [("u", long_word), ("s", "the cat runs and the dog sees"), ("p", ("a cat", "a dog")), ("m", {"context": "c", "choices": ["a"]}),
              ("t", "cat")]  # fmt: skip
    assert list(_by_length(inputs, batch_size=2, tokenizer=tokenizer)) == [[0, 4], [2, 1], [3]]
    assert list(_by_length(inputs, batch_size=2)) == [[3, 4], [2, 1], [0]], "without a tokenizer: characters, as before"
    assert list(_by_length(inputs * 2, batch_size=2, window=2, tokenizer=tokenizer)) == [[0, 2], [1, 3], [5, 4], [7, 6], [9, 8]]


def test_a_lone_surrogate_in_a_json_string_is_a_bad_line_named_by_the_command(folder, tmp_path, capsys):
    """JSON may escape half a UTF-16 pair ("\\ud800"); no text holds it, and the tokenizer failed on it
    with an uncaught TypeError. It is a bad line, named with the file and line, exit 2."""
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": "a", "text": "the cat"}\n{"id": "bad", "text": "dogs \\ud800 see"}\n')
    status, err = _cli_in_process(capsys, "predict", "--model", folder, "--input", path, "--output", tmp_path / "o.jsonl")
    assert status == 2 and "in.jsonl: line 2" in err and "lone surrogate" in err and "Traceback" not in err, err
