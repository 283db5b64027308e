"""One contract for every reader, fuzzed (issue 26).

For each reader a valid file is generated, one corruption from the catalogue is applied, and
exactly one of these must happen:

1. the file loads with every row equal to the clean file's;
2. a ``DataError`` names the file (and the line, for a corruption that sits on a line);
3. warnings name lines, and every row on a line no warning names loads unchanged.

Never a raw exception, never a row silently changed, merged or dropped. The predict CLI's
reader is strict: only (1) or (2). Rows carry ids, so "unchanged" is checked row by row.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hf_multitask as hm
from hf_multitask.cli import read_inputs
from hf_multitask.data import load_text_label_files
from hf_multitask.reading import DataError

WORDS = ["good", "bad", "café", "naïve", "😀", "#tag", "@user", "x1", "über", "dull"]
SPEC = hm.TaskSpec(name="t", kind="classification", num_labels=3, text_columns=("text",), label_column="label")

# corruptions that any text file can get; each reader adds the structural ones its format has
COMMON = ["none", "truncate_last", "latin1", "utf16", "nul", "crlf", "no_final_newline", "bom", "empty", "comments_only", "long_line"]


@dataclass
class Sample:
    """A generated file: its lines, the id of the row each line belongs to, the expected rows."""

    lines: list[str]
    line_ids: list[str | None]  # per line: the row id it carries (None: header, comment, blank)
    rows: dict[str, Any]  # id -> expected row
    partner: Sample | None = None  # text + label files: the label file
    extra: dict[str, Any] = field(default_factory=dict)


texts = st.lists(st.sampled_from(WORDS), min_size=1, max_size=4).map(" ".join)
rows_strategy = st.lists(st.tuples(texts, st.integers(0, 2)), min_size=3, max_size=12)


def _first_text(rows):  # the first row always holds a non-ASCII character, so a re-encoding is visible
    return [("café " + rows[0][0], rows[0][1]), *rows[1:]]


# --- the readers: each builds a clean Sample and loads a path into {id: row} ----------------------


def tsv_sample(rows, delimiter="\t"):
    head = ["id", "text", "label"]
    lines = [delimiter.join(head)] + [delimiter.join([f"r{i}", t, str(y)]) for i, (t, y) in enumerate(rows)]
    return Sample(lines, [None] + [f"r{i}" for i in range(len(rows))], {f"r{i}": (t, y) for i, (t, y) in enumerate(rows)},
                  extra={"header": lines[0], "delimiter": delimiter, "quote_after": delimiter})  # fmt: skip


def jsonl_sample(rows):
    lines = [json.dumps({"id": f"r{i}", "text": t, "label": y}, ensure_ascii=False) for i, (t, y) in enumerate(rows)]
    return Sample(lines, [f"r{i}" for i in range(len(rows))], {f"r{i}": (t, y) for i, (t, y) in enumerate(rows)})


def json_array_sample(rows):
    items = [json.dumps({"id": f"r{i}", "text": t, "label": y}, ensure_ascii=False) for i, (t, y) in enumerate(rows)]
    lines = ["["] + [item + ("," if i < len(items) - 1 else "") for i, item in enumerate(items)] + ["]"]
    return Sample(lines, [None] + [f"r{i}" for i in range(len(rows))] + [None], {f"r{i}": (t, y) for i, (t, y) in enumerate(rows)})


TAGS = hm.upos_task().label_names


def conllu_sample(rows):
    lines, ids, expected = [], [], {}
    for i, (text, label) in enumerate(rows):
        words = text.split()
        tags = [TAGS[(label + k) % len(TAGS)] for k in range(len(words))]
        lines += [f"# sent_id = s{i}", f"# text = {text}"]
        ids += [None, None]
        for k, (w, tag) in enumerate(zip(words, tags), start=1):
            lines.append("\t".join([str(k), w, w.lower(), tag, "_", "_", "0", "dep", "_", "_"]))
            ids.append(f"s{i}")
        lines.append("")
        ids.append(None)
        expected[f"s{i}"] = (tuple(words), tuple(TAGS.index(t) for t in tags))
    return Sample(lines, ids, expected)


def text_label_sample(rows):
    labels = Sample([str(y) for _, y in rows], [f"p{i}" for i in range(len(rows))], {})
    return Sample([t for t, _ in rows], [f"p{i}" for i in range(len(rows))], {f"p{i}": (t, y) for i, (t, y) in enumerate(rows)},
                  partner=labels)  # fmt: skip


def load_table(path: Path) -> dict[str, Any]:
    ds = hm.load_task_data(SPEC, path)
    return {i: (t, y) for i, t, y in zip(ds["id"], ds["text"], ds["label"])}


def load_conllu(path: Path) -> dict[str, Any]:
    ds = hm.load_task_data(hm.upos_task(), path)
    return {i: (tuple(w), tuple(y)) for i, w, y in zip(ds["id"], ds["tokens"], ds["label"])}


def load_pair(path: Path) -> dict[str, Any]:
    ds = load_text_label_files(SPEC, path, path.with_name("labels.txt"), id_prefix="p")
    return {i: (t, y) for i, t, y in zip(ds["id"], ds["text"], ds["label"])}


def load_predict_inputs(path: Path) -> dict[str, Any]:
    return {ident: value for ident, value in read_inputs(path)}


# --- corruptions ---------------------------------------------------------------------------------


def corrupt(sample: Sample, kind: str, rng: Any) -> tuple[list[str] | bytes, dict[str, Any], bool]:
    """(new lines or raw bytes, the rows a clean load must give, final newline?)."""
    lines, expected = list(sample.lines), dict(sample.rows)
    data_lines = [i for i, ident in enumerate(sample.line_ids) if ident is not None]
    pick = data_lines[rng.randrange(len(data_lines))]
    newline = True
    if kind == "truncate_last":
        last = len(lines) - 1
        while not lines[last]:
            last -= 1
        lines = lines[: last + 1]
        lines[last] = lines[last][: max(0, len(lines[last]) - 1 - rng.randrange(max(1, len(lines[last]) // 2)))]
        newline = False
    elif kind == "no_final_newline":
        newline = False
    elif kind == "comments_only":
        lines = ["# only a comment", "# and another"]
    elif kind == "empty":
        return b"", expected, True
    elif kind == "long_line":  # a valid row with a 100,000-character text: must load as it is
        ident = sample.line_ids[pick]
        if sample.extra.get("long_line") is None:
            return lines, expected, True
        lines[pick], expected[ident] = sample.extra["long_line"](lines[pick], expected[ident])
    elif kind == "drop_column":
        lines[pick] = sample.extra["delimiter"].join(lines[pick].split(sample.extra["delimiter"])[:-1])
    elif kind == "add_column":
        lines[pick] += sample.extra["delimiter"] + "extra"
    elif kind == "header_repeat":
        lines.insert(pick, sample.extra["header"])
    elif kind == "unbalanced_quote":
        lines[pick] = lines[pick].replace(sample.extra.get("quote_after", "\t"), sample.extra.get("quote_after", "\t") + '"', 1)
    elif kind == "drop_key":
        record = json.loads(lines[pick].rstrip(","))
        record.pop("label")
        lines[pick] = json.dumps(record, ensure_ascii=False) + ("," if lines[pick].endswith(",") else "")
    elif kind == "drop_line":
        del lines[pick]
    text = "\n".join(lines) + ("\n" if newline and lines else "")
    if kind == "crlf":
        return text.replace("\n", "\r\n").encode(), expected, True
    if kind == "bom":
        return b"\xef\xbb\xbf" + text.encode(), expected, True
    if kind == "latin1":
        return text.encode("latin-1", errors="backslashreplace"), expected, True
    if kind == "utf16":
        return text.encode("utf-16"), expected, True
    if kind == "nul":
        at = sum(len(line.encode()) + 1 for line in lines[:pick]) + rng.randrange(len(lines[pick].encode()) + 1)
        raw = text.encode()
        return raw[:at] + b"\x00" + raw[at:], expected, True
    return text.encode(), expected, newline


def _long_text(line: str, row: tuple) -> tuple[str, tuple]:
    long = "y" * 100_000
    return line.replace(row[0], long, 1), (long, row[1])


# --- the contract --------------------------------------------------------------------------------

LINE_RE = re.compile(r"line (\d+)")


def check_contract(load, path: Path, sample: Sample, kind: str, expected: dict[str, Any], strict: bool = False,
                   line_ids: list[str | None] | None = None) -> str:  # fmt: skip
    """Load ``path`` and hold the outcome to the contract; returns which outcome it was."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            loaded = load(path)
        except DataError as err:
            message = str(err)
            assert path.name in message or "labels.txt" in message, f"{kind}: the error does not name the file: {message}"
            whole_file = kind in ("empty", "comments_only", "utf16", "drop_line", "truncate_last")
            assert whole_file or LINE_RE.search(message), f"{kind}: the error names no line: {message}"
            return "error"
        except Exception as err:  # noqa: BLE001 - the contract: nothing else may escape
            pytest.fail(f"{kind}: raw {type(err).__name__}: {err}")
    named = [str(w.message) for w in caught if issubclass(w.category, (hm.DataWarning,))]
    if strict:
        assert not named, f"{kind}: the strict reader warned instead of failing: {named}"
    warned_lines = {int(m) for message in named for m in LINE_RE.findall(message)}
    assert all(LINE_RE.search(m) for m in named), f"{kind}: a warning names no line: {named}"
    ids = line_ids if line_ids is not None else sample.line_ids
    warned_ids = {ids[n - 1] for n in warned_lines if 0 < n <= len(ids)}
    for ident, row in expected.items():
        if ident in warned_ids:
            continue
        assert ident in loaded, f"{kind}: row {ident} silently dropped (warnings: {named})"
        assert loaded[ident] == row, f"{kind}: row {ident} silently changed: {loaded[ident]!r} != {row!r}"
    extra = set(loaded) - set(expected)
    assert not extra, f"{kind}: rows appeared that the clean file does not have: {sorted(extra)}"
    return "warned" if named else "equal"


def _write(path: Path, content: list[str] | bytes, newline: bool = True) -> None:
    path.write_bytes(content if isinstance(content, bytes) else ("\n".join(content) + ("\n" if newline else "")).encode())


def _line_ids_after(sample: Sample, kind: str, content: bytes) -> list[str | None]:
    """Line -> row id in the corrupted file (a repeated header shifts the lines after it)."""
    if kind != "header_repeat":
        return sample.line_ids
    lines = content.decode("utf-8").split("\n")
    ids = []
    remaining = list(zip(sample.lines, sample.line_ids))
    for line in lines:
        if remaining and line == remaining[0][0]:
            ids.append(remaining.pop(0)[1])
        else:
            ids.append(None)
    return ids


READERS = {
    "tsv": (lambda r: _with_long(tsv_sample(r)), load_table, "data.tsv",
            ["drop_column", "add_column", "header_repeat", "unbalanced_quote"]),
    "csv": (lambda r: _with_long(tsv_sample(r, ",")), load_table, "data.csv",
            ["drop_column", "add_column", "header_repeat", "unbalanced_quote"]),
    "jsonl": (lambda r: _with_long(jsonl_sample(r), quote_after='"text": '), load_table, "data.jsonl", ["drop_key", "unbalanced_quote"]),
    "json": (lambda r: _with_long(json_array_sample(r), quote_after='"text": '), load_table, "data.json", ["drop_key", "unbalanced_quote"]),
    "conllu": (lambda r: conllu_sample(r), load_conllu, "data.conllu", ["drop_column", "add_column"]),
}  # fmt: skip


def _with_long(sample: Sample, **extra: Any) -> Sample:
    sample.extra.update(long_line=_long_text, **extra)
    return sample


def _conllu_extra(sample: Sample) -> Sample:
    sample.extra["delimiter"] = "\t"
    return sample


@pytest.mark.parametrize("reader", list(READERS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=rows_strategy, data=st.data())
def test_every_reader_meets_the_contract(reader, rows, data, tmp_path_factory):
    build, load, name, structural = READERS[reader]
    kind = data.draw(st.sampled_from(COMMON + structural), label="corruption")
    rng = data.draw(st.randoms(use_true_random=False), label="rng")
    sample = build(_first_text(rows))
    if reader == "conllu":
        sample = _conllu_extra(sample)
    path = tmp_path_factory.mktemp(reader) / name
    content, expected, newline = corrupt(sample, kind, rng)
    _write(path, content, newline)
    raw = path.read_bytes()
    check_contract(load, path, sample, kind, expected, line_ids=_line_ids_after(sample, kind, raw) if kind == "header_repeat" else None)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=rows_strategy, data=st.data())
def test_text_label_files_meet_the_contract(rows, data, tmp_path_factory):
    """Either file of the pair gets the corruption; the labels file also the structural ones."""
    which = data.draw(st.sampled_from(["text", "labels"]), label="file")
    kinds = COMMON + (["drop_line", "add_column"] if which == "labels" else ["drop_line"])
    kind = data.draw(st.sampled_from([k for k in kinds if k != "long_line"]), label="corruption")
    rng = data.draw(st.randoms(use_true_random=False), label="rng")
    sample = text_label_sample(_first_text(rows))
    sample.partner.extra["delimiter"] = "\t"
    folder = tmp_path_factory.mktemp("pair")
    target, other = (sample, sample.partner) if which == "text" else (sample.partner, sample)
    content, _, newline = corrupt(target, kind, rng)
    _write(folder / ("texts.txt" if which == "text" else "labels.txt"), content, newline)
    _write(folder / ("labels.txt" if which == "text" else "texts.txt"), other.lines)
    check_contract(load_pair, folder / "texts.txt", sample, kind, sample.rows)


@pytest.mark.parametrize("suffix", [".tsv", ".jsonl"])
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=rows_strategy, data=st.data())
def test_predict_inputs_meet_the_strict_contract(suffix, rows, data, tmp_path_factory):
    """``hf-multitask predict`` reads strictly: a bad line is an error naming it, never a skip."""
    rows = _first_text(rows)
    if suffix == ".tsv":
        sample = Sample(["id\ttext"] + [f"r{i}\t{t}" for i, (t, _) in enumerate(rows)], [None] + [f"r{i}" for i in range(len(rows))],
                        {f"r{i}": t for i, (t, _) in enumerate(rows)}, extra={"delimiter": "\t", "header": "id\ttext"})  # fmt: skip
        structural = ["drop_column", "add_column", "unbalanced_quote"]
        # not "truncate_last": a cut inside the last field, free text here, leaves a valid line that no reader can
        # tell from a shorter text (the data readers' files end in a label, where a cut shows)
    else:
        sample = Sample([json.dumps({"id": f"r{i}", "text": t}, ensure_ascii=False) for i, (t, _) in enumerate(rows)],
                        [f"r{i}" for i in range(len(rows))], {f"r{i}": t for i, (t, _) in enumerate(rows)},
                        extra={"quote_after": '"text": '})  # fmt: skip
        structural = ["unbalanced_quote"]
    skip = {"long_line"} | ({"truncate_last"} if suffix == ".tsv" else set())
    kind = data.draw(st.sampled_from([k for k in COMMON if k not in skip] + structural), label="corruption")
    rng = data.draw(st.randoms(use_true_random=False), label="rng")
    path = tmp_path_factory.mktemp("inputs") / f"in{suffix}"
    content, expected, newline = corrupt(sample, kind, rng)
    _write(path, content, newline)
    check_contract(load_predict_inputs, path, sample, kind, expected, strict=True)
