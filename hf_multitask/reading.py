"""The one reading layer: every file hf-multitask reads goes from bytes to numbered lines here.

Data files (CSV / TSV, JSON / JSON lines, CoNLL-U, the TweetEval text + label layout), the
``hf-multitask predict`` inputs, grid files and YAML configs all come through
[`iter_lines()`][hf_multitask.reading.iter_lines] (or [`read_text()`][hf_multitask.reading.read_text], which joins its lines), so they share one contract:

* UTF-8; a byte-order mark at the start of the file is dropped;
* lines end at ``\\n`` or ``\\r\\n``; a lone ``\\r`` or a Unicode line separator inside a line is
  text (a line never splits where a partner file or a line count says it does not);
* a missing final newline is fine;
* a line that is not UTF-8, a NUL byte, or a UTF-16 / UTF-32 file is a [`DataError`][hf_multitask.reading.DataError]
  naming the file, the line and the column, never a bare ``UnicodeDecodeError``.

What a reader then does with a line it cannot use (a bad row) is the tolerance rule of
[`hf_multitask.load_task_data()`][hf_multitask.data.load_task_data]: reported as a [`DataWarning`][hf_multitask.reading.DataWarning] naming the line and
skipped, ``strict`` making it an error, more than ``max_bad_fraction`` of the rows always one.
"""

from __future__ import annotations

import codecs
import csv
import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "BadRecord",
    "DataError",
    "DataWarning",
    "Lines",
    "TableRow",
    "iter_json_records",
    "iter_lines",
    "read_lines",
    "read_table",
    "read_text",
    "where",
]

_WIDE_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"), (codecs.BOM_UTF16_LE, "UTF-16"),
              (codecs.BOM_UTF16_BE, "UTF-16"))  # fmt: skip


class DataError(ValueError):
    """Bad input: the message names the file, the line (and the column where it is known)."""


class DataWarning(UserWarning):
    """A malformed row was skipped while reading (the message names the file and line)."""


def where(path: str | os.PathLike[str], line: int, column: int | None = None) -> str:
    """``"file: line N"`` or ``"file: line N, column C"``: how every message names a place."""
    return f"{path}: line {line}" + (f", column {column}" if column is not None else "")


def _decode(path: Path, number: int, raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        column = len(raw[: err.start].decode("utf-8", errors="replace")) + 1
        raise DataError(
            f"{where(path, number, column)}: not UTF-8 text (byte 0x{raw[err.start]:02x}: {err.reason}); save the file as UTF-8"
        ) from None
    if "\x00" in text:
        hint = " (a UTF-16 file? save it as UTF-8)" if number == 1 and text.index("\x00") <= 1 else ""
        raise DataError(f"{where(path, number, text.index(chr(0)) + 1)}: a NUL byte, which text never holds{hint}")
    return text


def iter_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` for every line of a UTF-8 file, 1-based, without the line ending.

    Streams the file (a large file is never read whole). Blank lines are yielded (callers
    decide what a blank line means). Raises ``FileNotFoundError`` for a missing file and
    [`DataError`][hf_multitask.reading.DataError] (naming file, line, column) for text that is not UTF-8."""
    yield from _lines(Path(path), {})


def _lines(path: Path, state: dict[str, bool]) -> Iterator[tuple[int, str]]:
    """[`iter_lines()`][hf_multitask.reading.iter_lines], recording in ``state["final_newline"]`` whether the last line ended
    with a line ending (an empty file counts as ended: it has no last line to lack one)."""
    if path.is_dir():
        raise DataError(f"{path} is a folder, not a file")
    state["final_newline"] = True
    with open(path, "rb") as handle:
        number = 0
        for raw in handle:  # binary iteration splits at b"\n" only
            number += 1
            state["final_newline"] = raw.endswith(b"\n")
            if number == 1:
                for bom, name in _WIDE_BOMS:
                    if raw.startswith(bom):
                        raise DataError(f"{where(path, 1, 1)}: the file is {name} text (byte-order mark); save it as UTF-8")
                raw = raw.removeprefix(codecs.BOM_UTF8)
            if raw.endswith(b"\n"):
                raw = raw[:-1].removesuffix(b"\r")
            yield number, _decode(path, number, raw)


class Lines(list):
    """The lines of a file; ``final_newline`` says whether its last line had a line ending."""

    final_newline: bool = True


def read_lines(path: str | os.PathLike[str]) -> Lines:
    """Every line of the file (see [`iter_lines()`][hf_multitask.reading.iter_lines]): item ``i`` is line ``i + 1``. One pass:
    ``final_newline`` on the result tells a file cut short inside its last line."""
    state: dict[str, bool] = {}
    lines = Lines(text for _, text in _lines(Path(path), state))
    lines.final_newline = state["final_newline"]
    return lines


def read_text(path: str | os.PathLike[str]) -> str:
    """The whole file as text (every line ended with ``\\n``), checked line by line as in
    [`iter_lines()`][hf_multitask.reading.iter_lines]: for formats parsed whole (YAML, JSON)."""
    return "".join(line + "\n" for line in read_lines(path))


class BadRecord(str):
    """A record that cannot be read (its text says why); the line is yielded beside it."""

    @property
    def problem(self) -> str:
        """Why the record cannot be read (what row readers report for a bad row)."""
        return str(self)


def _json_array(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    """The items of a JSON array, each with the line it starts on."""
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1

    def skip(pos: int) -> int:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    def fail(at: int, why: str) -> DataError:
        line = text.count("\n", 0, at) + 1
        return DataError(f"{where(path, line, at - (text.rfind(chr(10), 0, at) + 1) + 1)}: {why}")

    pos = skip(pos)
    if pos < len(text) and text[pos] == "]":
        return
    while True:
        try:
            item, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise fail(err.pos, f"not valid JSON ({err.msg}); a JSON array must be valid as a whole") from None
        yield text.count("\n", 0, pos) + 1, item
        pos = skip(end)
        if pos < len(text) and text[pos] == ",":
            pos = skip(pos + 1)
            continue
        if pos < len(text) and text[pos] == "]" and not text[skip(pos + 1) :].strip():
            return
        raise fail(pos, "not valid JSON (expected ',' or the closing ']' of the array)")


def iter_json_records(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any] | BadRecord]]:
    """``(line, record)`` for a JSON-lines file (one object per line; blank lines skipped) or a
    JSON file holding one array of objects (``line`` is where the item starts).

    A JSON-lines line that is not a JSON object comes as a [`BadRecord`][hf_multitask.reading.BadRecord] saying why (the
    caller reports or skips that line); an array that is not valid JSON is a
    [`DataError`][hf_multitask.reading.DataError] naming the line and column, since nothing after the error can be
    trusted."""
    path = Path(path)
    lines = iter_lines(path)
    first = next(((n, t) for n, t in lines if t.strip()), None)
    if first is None:
        return
    if first[1].lstrip().startswith("["):
        text = "\n" * (first[0] - 1) + first[1] + "".join("\n" + t for _, t in lines)
        for line, item in _json_array(path, text):
            yield line, _json_record(item)
        return
    for number, line in itertools.chain([first], ((n, t) for n, t in lines if t.strip())):
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            yield number, BadRecord(f"column {err.colno}: not valid JSON ({err.msg})")
            continue
        yield number, _json_record(item)


def _json_record(item: Any) -> dict[str, Any] | BadRecord:
    """``item`` if it is a JSON object of real text, else the reason it is not. JSON lets a string
    escape half of a UTF-16 pair (``"\\ud800"``): no text holds such a lone surrogate, and a
    tokenizer fails on it deep inside."""
    if not isinstance(item, dict):
        return BadRecord(f"expected a JSON object, got {type(item).__name__}")
    try:
        json.dumps(item, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return BadRecord("a string holds a lone surrogate (an escape such as \\ud800 without its pair): not text")
    return item


class TableRow(list):
    """The fields of one physical line, or the reason that line cannot be a row."""

    problem: str | None = None


def read_table(path: str | os.PathLike[str], delimiter: str | None = None) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """Header and (line number, fields) rows of a delimited file.

    Every physical line is one record (header = line 1), parsed on its own with the csv
    module: a quote that does not close on its line can never swallow the lines after it.
    Such a line, and a field holding the delimiter tab, come back as a [`TableRow`][hf_multitask.reading.TableRow]
    whose ``problem`` says what is wrong, so the caller reports and skips exactly that line.
    Lines come from [`iter_lines()`][hf_multitask.reading.iter_lines]: UTF-8, a byte-order mark dropped, a line that is not
    UTF-8 an error naming it. ``delimiter`` None: a tab for ``.tsv`` files or a tab in the
    header, else a comma.
    """
    path = Path(path)
    lines = iter_lines(path)
    first = next(lines, (1, ""))[1]
    if not first.strip():
        lines.close()
        raise DataError(f"{path}: the file is empty" if not first else f"{path}: line 1 (the header) is empty")
    if delimiter is None:
        delimiter = "\t" if (path.suffix == ".tsv" or "\t" in first) else ","
    header = next(csv.reader([first], delimiter=delimiter))

    def rows() -> Iterator[tuple[int, list[str]]]:
        for line, text in lines:
            if not text.strip():
                continue
            try:
                fields = TableRow(next(csv.reader([text], delimiter=delimiter, strict=True)))
            except csv.Error as err:
                fields = TableRow(text.split(delimiter))
                fields.problem = f"malformed quoting ({err}): a quote opens a field that does not close on this line"
            else:
                if delimiter == "\t" and any("\t" in f for f in fields):
                    fields.problem = "a field holds a tab (quoted): in a tab-separated file that is a stray quote"
                elif any("\r" in f for f in fields):
                    fields.problem = "a field holds a carriage return"
            yield line, fields

    return header, rows()
