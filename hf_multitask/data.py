"""Loading task data from CS224N-format files, generic CSV/TSV/JSON, Hub datasets or a `datasets.Dataset`.

Every source ends in one validated ``datasets.Dataset`` with the columns ``id``, the task's
text columns and ``label`` (int for classification, float for regression).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from .reading import BadRecord, DataError, DataWarning, iter_json_records, read_lines, read_table
from .tasks import TaskSpec

__all__ = [
    "DataError",
    "DataWarning",
    "BadRow",
    "load_task_data",
    "load_text_label_files",
    "partial_label_tasks",
    "train_validation_split",
]

_JSON_SUFFIXES = {".json", ".jsonl"}
_TABLE_SUFFIXES = {".csv", ".tsv", ".txt"}
_MAX_LISTED = 10


@dataclass(frozen=True)
class BadRow:
    """One rejected row: where it is and why."""

    origin: str
    line: int
    column: str | None
    reason: str

    def __str__(self) -> str:
        col = f", column {self.column!r}" if self.column else ""
        return f"{self.origin}: line {self.line}{col}: {self.reason}"


def _json_rows(path: Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    """Columns (every key, in order of first appearance) and (line, record) rows of a JSON /
    JSON-lines file; an unreadable line comes as the reader's [`BadRecord`][hf_multitask.reading.BadRecord], whose
    ``problem`` makes it a bad row."""
    columns: dict[str, None] = {}
    rows: list[tuple[int, Any]] = []
    for line, record in iter_json_records(path):
        if not isinstance(record, BadRecord):
            columns.update(dict.fromkeys(record))
        rows.append((line, record))
    if not rows:
        raise DataError(f"{path}: the file is empty")
    return list(columns), rows


def _is_hub_id(source: str) -> bool:
    if os.path.exists(source) or Path(source).suffix.lower() in _JSON_SUFFIXES | _TABLE_SUFFIXES:
        return False
    parts = source.split("/")
    return 1 <= len(parts) <= 2 and all(parts) and not source.startswith((".", "~"))


def _load_hub(source: str, split: str, subset: str | None) -> datasets.Dataset:
    try:
        loaded = datasets.load_dataset(source, subset, split=split)
    except Exception as err:  # network, auth, unknown id: say what to do instead
        raise DataError(
            f"Could not load the Hub dataset {source!r} (split {split!r}): {type(err).__name__}: {err}. "
            "With no network, pass local files instead (CS224N-format/CSV/TSV/JSON paths) or a "
            "`datasets.Dataset` already in memory."
        ) from err
    if not isinstance(loaded, datasets.Dataset):
        raise DataError(f"{source!r} split {split!r} did not give a single Dataset (got {type(loaded).__name__})")
    return loaded


def _class_names(feature: Any) -> list[str] | None:
    """The class names of a ``ClassLabel`` feature, or of the ``ClassLabel`` inside a list of them (tags)."""
    inner = getattr(feature, "feature", None)
    feature = inner if isinstance(inner, datasets.ClassLabel) else feature
    return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None


def _label_remap(spec: TaskSpec, ds: datasets.Dataset, origin: str) -> dict[int, int] | None:
    """``{dataset class index: task class index}`` when the label column is a ``ClassLabel`` whose
    names the task's ``label_names`` hold in another order (None when both agree or either has no
    names: the integers are then class indices). A ``ClassLabel`` name the task does not have
    cannot be mapped: a [`DataError`][hf_multitask.reading.DataError] names both lists."""
    names = _class_names(ds.features.get(spec.label_column)) if spec.label_column in ds.column_names else None
    if names is None or spec.label_names is None or tuple(names) == tuple(spec.label_names):
        return None
    unknown = [n for n in names if n not in spec.label_names]
    if unknown:
        raise DataError(
            f"{origin}: column {spec.label_column!r} is a ClassLabel with names {names}, but task {spec.name!r} has label_names "
            f"{list(spec.label_names)} (no {unknown}): its integer labels cannot be mapped by name. Make the names agree, or "
            "leave label_names out to read the integers as class indices"
        )
    return {i: spec.label_names.index(n) for i, n in enumerate(names)}


def _records_from_dataset(
    ds: datasets.Dataset, first_line: int, spec: TaskSpec, origin: str
) -> tuple[list[str], Iterator[tuple[int, dict[str, Any]]]]:
    remap = _label_remap(spec, ds, origin)

    def relabel(value: Any) -> Any:  # a class index, or a list of them (tags); -1 (no label) and others stay as they are
        if isinstance(value, (list, tuple)):
            return [relabel(v) for v in value]
        return remap.get(value, value) if isinstance(value, int) and not isinstance(value, bool) else value

    def rows() -> Iterator[tuple[int, dict[str, Any]]]:
        for i, row in enumerate(ds):
            if remap is not None:
                row = {**row, spec.label_column: relabel(row[spec.label_column])}
            yield first_line + i, row

    return list(ds.column_names), rows()


ABSURD_LABEL = 1e6


def _check_row(
    spec: TaskSpec, origin: str, line: int, row: Any, columns: list[str], index: dict[str, int], missing_labels: bool = False
) -> BadRow | tuple[dict[str, str], float | int]:
    """The row's (texts, label), or the [`BadRow`][hf_multitask.data.BadRow] that says why it cannot be used."""
    if getattr(row, "problem", None):  # a line the reader could not parse (quoting, JSON syntax)
        return BadRow(origin, line, None, row.problem)
    if isinstance(row, list):  # delimited file: the field count first
        if len(row) != len(columns):
            return BadRow(origin, line, None, f"row has {len(row)} fields, the header has {len(columns)}")
        get = lambda c: row[index[c]]  # noqa: E731
    else:
        get = row.get
    task_type = spec.task_type
    texts = {}
    for c in spec.text_columns:
        text, reason = task_type.check_text(spec, get(c), column=c)
        if reason is not None:
            return BadRow(origin, line, c, reason)
        texts[c] = text
    raw_label = get(spec.label_column)
    absent = raw_label is None or (isinstance(raw_label, str) and not raw_label.strip())
    if missing_labels and (absent or (isinstance(raw_label, float) and math.isnan(raw_label))):
        return texts, task_type.missing_label(spec)  # partial labels: masked, never filled
    label, reason = task_type.parse_label(spec, raw_label)
    if reason is not None:
        return BadRow(origin, line, spec.label_column, reason)
    reason = task_type.check_row(spec, texts, label)
    if reason is not None:
        return BadRow(origin, line, spec.label_column, reason)
    return texts, label


def _validate(
    spec: TaskSpec,
    origin: str,
    columns: list[str],
    rows: Iterable[tuple[int, Any]],
    *,
    strict: bool,
    max_bad_fraction: float,
    limit: int | None,
    missing_labels: bool = False,
) -> datasets.Dataset:
    if missing_labels and spec.task_type.missing_label(spec) is None:
        raise DataError(f"Task {spec.name!r}: {spec.kind} tasks have no missing-label marker; missing_labels=True is not available")
    need = list(spec.text_columns) + [spec.label_column]
    missing = [c for c in need if c not in columns]
    if missing:
        raise DataError(f"{origin}: missing column(s) {missing} needed by task {spec.name!r}; the columns are {columns}")
    has_id = spec.id_column in columns
    index = {c: i for i, c in enumerate(columns)}
    out: dict[str, list[Any]] = {"id": [], **{c: [] for c in spec.text_columns}, "label": []}
    bad: list[BadRow] = []
    total = 0
    absurd: list[tuple[int, float]] = []  # regression labels of absurd magnitude (no label_range to check them)
    for line, row in rows:
        if limit is not None and len(out["label"]) >= limit:
            break
        total += 1
        checked = _check_row(spec, origin, line, row, columns, index, missing_labels)
        if isinstance(checked, BadRow):
            if strict:
                raise DataError(str(checked))
            bad.append(checked)
            continue
        texts, label = checked
        if isinstance(label, float) and spec.label_range is None and abs(label) > ABSURD_LABEL:
            absurd.append((line, label))
        get = (lambda c, row=row: row[index[c]]) if isinstance(row, list) else row.get
        ident = get(spec.id_column) if has_id else None
        out["id"].append(str(ident) if ident not in (None, "") else str(total - 1))
        for c, t in texts.items():
            out[c].append(t)
        out["label"].append(label)
    if absurd:
        where = ", ".join(f"line {ln}: {v:g}" for ln, v in absurd[:3])
        warnings.warn(
            f"{origin}: {len(absurd)} regression label(s) of task {spec.name!r} exceed {ABSURD_LABEL:g} in magnitude ({where}); "
            "declare the task's label_range to reject such rows",
            DataWarning,
            stacklevel=3,
        )
    if total == 0:
        raise DataError(f"{origin}: no data rows")
    if bad and (not out["label"] or len(bad) > max(1, max_bad_fraction * total)):
        listed = "\n  ".join(str(b) for b in bad[:_MAX_LISTED])
        raise DataError(
            f"{origin}: {len(bad)} of {total} rows are malformed (more than max_bad_fraction={max_bad_fraction}); first ones:\n  {listed}"
        )
    for b in bad[:_MAX_LISTED]:
        warnings.warn(f"skipped malformed row: {b}", DataWarning, stacklevel=3)
    if len(bad) > _MAX_LISTED:
        warnings.warn(f"{origin}: skipped {len(bad) - _MAX_LISTED} more malformed rows", DataWarning, stacklevel=3)
    task_type = spec.task_type
    features = datasets.Features(
        {"id": datasets.Value("string"), **{c: task_type.text_feature(spec, c) for c in spec.text_columns},
         "label": task_type.label_feature(spec)}
    )  # fmt: skip
    return datasets.Dataset.from_dict(out, features=features)


def load_task_data(
    spec: TaskSpec,
    source: str | os.PathLike[str] | datasets.Dataset,
    *,
    split: str = "train",
    subset: str | None = None,
    delimiter: str | None = None,
    strict: bool = False,
    max_bad_fraction: float = 0.01,
    limit: int | None = None,
    missing_labels: bool = False,
) -> datasets.Dataset:
    """Load and validate one task's examples.

    Args:
        spec: The task; its ``text_columns``, ``label_column`` and ``id_column`` name the
            columns to read.
        source: One of
            * a CS224N-format file (tab-separated, leading unnamed index column, ``id``,
              text columns, label) or any CSV / TSV file with a header row (the delimiter
              is a tab for ``.tsv`` files and for files whose header holds a tab, else a comma);
            * a JSON / JSON-lines file (read with ``datasets``);
            * a CoNLL-U file (``.conllu``, one record per sentence with the columns ``id``,
              ``tokens``, ``lemma``, ``upos``, ``xpos``, ``deprel``) for token classification;
            * a Hub dataset id (``"glue"`` with ``subset="stsb"``, ...), read with
              ``datasets.load_dataset`` (needs the network or a warm cache);
            * a ``datasets.Dataset`` already in memory.

            A ``ClassLabel`` label column (or a list of them, for tags) of a ``datasets`` source is read by its
            names when ``spec.label_names`` is given, whatever their order; a name the task does not
            have is a [`DataError`][hf_multitask.reading.DataError].
        split: Split of a Hub dataset.
        subset: Configuration name of a Hub dataset.
        delimiter: Force the delimiter of a CSV/TSV file.
        strict: Raise [`DataError`][hf_multitask.reading.DataError] at the first malformed row instead of skipping it.
        max_bad_fraction: Outside strict mode, malformed rows are reported (a
            [`DataWarning`][hf_multitask.reading.DataWarning] each, naming file, line and column) and skipped, unless more
            than this fraction of the rows is bad, which raises [`DataError`][hf_multitask.reading.DataError].
        limit: Keep at most this many valid rows (in file order).
        missing_labels: Partial labels: an empty or absent label is kept as the task type's
            missing-label marker (-100 for classes, NaN for regression), which the loss and the
            metrics mask, instead of making the row malformed.

    Returns:
        A ``datasets.Dataset`` with ``id`` (string), the text columns and ``label``.

    Raises:
        DataError: missing column, empty source, too many malformed rows, any malformed row
            in strict mode, or a Hub dataset that cannot be reached.
        FileNotFoundError: a local path that does not exist.
    """
    kwargs = {"strict": strict, "max_bad_fraction": max_bad_fraction, "limit": limit, "missing_labels": missing_labels}
    if isinstance(source, datasets.Dataset):
        origin = f"Dataset(task={spec.name!r})"
        columns, rows = _records_from_dataset(source, 0, spec, origin)
        return _validate(spec, origin, columns, rows, **kwargs)
    source = os.fspath(source)
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if not path.exists():
        if _is_hub_id(source):
            ds = _load_hub(source, split, subset)
            columns, rows = _records_from_dataset(ds, 0, spec, f"{source}[{split}]")
            return _validate(spec, f"{source}[{split}]", columns, rows, **kwargs)
        raise FileNotFoundError(f"No such data file: {source} (task {spec.name!r})")
    if path.is_dir():
        raise DataError(f"{source} is a folder; pass a file for task {spec.name!r}")
    if suffix == ".conllu":
        from .conllu import CONLLU_COLUMNS, read_conllu

        return _validate(spec, str(source), list(CONLLU_COLUMNS), read_conllu(path), **kwargs)
    if suffix in _JSON_SUFFIXES:
        columns, rows = _json_rows(path)
        return _validate(spec, str(source), columns, rows, **kwargs)
    header, table_rows = read_table(path, delimiter)
    return _validate(spec, str(source), header, table_rows, **kwargs)


def load_text_label_files(
    spec: TaskSpec,
    text_file: str | os.PathLike[str],
    label_file: str | os.PathLike[str],
    *,
    extra_columns: dict[str, str] | None = None,
    id_prefix: str = "",
    strict: bool = False,
    max_bad_fraction: float = 0.01,
    limit: int | None = None,
) -> datasets.Dataset:
    """One task's examples from the "one text per line + one label per line" layout (TweetEval,
    SemEval releases and many others): line ``i`` of ``label_file`` labels line ``i`` of
    ``text_file``. Labels are class indices or names from ``spec.label_names``.

    The files must have the same number of lines, else a [`DataError`][hf_multitask.reading.DataError] names both files
    and the first line that has no partner. Bad rows (an empty text, a label that is not a
    class) are reported by their line number and skipped, as in [`load_task_data()`][hf_multitask.data.load_task_data].

    Args:
        spec: A single-sentence task (its one text column gets the texts), or a pair task whose
            first text column is given by ``extra_columns`` (e.g. a stance target).
        extra_columns: Constant values of other text columns, ``{column: value}``.
        id_prefix: Ids are ``f"{id_prefix}{line - 1}"`` (the 0-based line index).
        strict: As in [`load_task_data()`][hf_multitask.data.load_task_data].
        max_bad_fraction: As in [`load_task_data()`][hf_multitask.data.load_task_data].
        limit: As in [`load_task_data()`][hf_multitask.data.load_task_data].
    """
    texts, labels = read_lines(text_file), read_lines(label_file)
    if len(texts) != len(labels):
        first = min(len(texts), len(labels)) + 1
        longer = text_file if len(texts) > len(labels) else label_file
        raise DataError(
            f"{text_file} has {len(texts)} lines but {label_file} has {len(labels)}: line {first} of {longer} has no partner "
            "(one text per line and one label per line, in the same order)"
        )
    ends = {text_file: texts.final_newline, label_file: labels.final_newline}
    if len(set(ends.values())) == 2 and texts:  # one file was cut short, or written differently: say which line
        cut = next(path for path, ended in ends.items() if not ended)
        warnings.warn(
            f"{cut}: line {len(texts)} (the last) has no line ending, but its partner file's last line has one: if {Path(cut).name} "
            "was cut short, that row is incomplete",
            DataWarning,
            stacklevel=2,
        )
    constant = dict(extra_columns or {})
    (text_column,) = [c for c in spec.text_columns if c not in constant] or [None]
    if text_column is None:
        raise DataError(f"Task {spec.name!r}: extra_columns {sorted(constant)} leave no text column for {text_file}")
    columns = [*spec.text_columns, spec.label_column, spec.id_column]
    rows = (
        (number, {**constant, text_column: text, spec.label_column: label, spec.id_column: f"{id_prefix}{number - 1}"})
        for number, (text, label) in enumerate(zip(texts, labels), start=1)
    )
    return _validate(spec, f"{text_file} + {label_file.name if isinstance(label_file, Path) else Path(label_file).name}", columns, rows,
                     strict=strict, max_bad_fraction=max_bad_fraction, limit=limit)  # fmt: skip


def train_validation_split(
    dataset: datasets.Dataset, validation_fraction: float = 0.1, seed: int = 0
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Seeded (train, validation) split; the same seed always gives the same split."""
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    parts = dataset.train_test_split(test_size=validation_fraction, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


def partial_label_tasks(
    source: str | os.PathLike[str] | datasets.Dataset, specs: Sequence[TaskSpec], **kwargs: Any
) -> dict[str, datasets.Dataset]:
    """One dataset with several label columns (e.g. a sentence with a sentiment label and a
    topic label, either possibly missing) as ``{task: dataset}``: every row for every task,
    each task's missing labels kept as its masked marker (see ``missing_labels`` of
    [`load_task_data()`][hf_multitask.data.load_task_data]). Each row then trains exactly the heads whose labels it has, and a
    step in which a task has no label at all gives that task no gradient row."""
    return {spec.name: load_task_data(spec, source, missing_labels=True, **kwargs) for spec in specs}
