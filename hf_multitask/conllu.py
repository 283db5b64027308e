"""A small CoNLL-U reader: one record per sentence, for token-classification tasks.

CoNLL-U (Universal Dependencies): ``#`` comment lines, then one token per line with ten
tab-separated fields (ID, FORM, LEMMA, UPOS, XPOS, FEATS, HEAD, DEPREL, DEPS, MISC), a blank
line after each sentence. Multiword-token lines (ID ``3-4``: "don't" over "do" + "n't") and
empty nodes (ID ``8.1``) have no tag of their own and are skipped; the words are the
syntactic words. The sentence id is the ``# sent_id =`` comment (or the sentence's number).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .reading import iter_lines

__all__ = ["CONLLU_COLUMNS", "UPOS_TAGS", "ConlluSentenceError", "read_conllu"]

UPOS_TAGS = ("ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON", "PROPN", "PUNCT", "SCONJ", "SYM",
             "VERB", "X")  # fmt: skip
# the record columns: ``tokens`` (FORM) and one list per other field a tagger may train on
CONLLU_COLUMNS = ("id", "tokens", "lemma", "upos", "xpos", "deprel")
_FIELDS = {"tokens": 1, "lemma": 2, "upos": 3, "xpos": 4, "deprel": 7}


class ConlluSentenceError(list):
    """Marks a sentence that cannot be read; ``problem`` says why (file line in the row)."""

    problem: str | None = None


def read_conllu(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | ConlluSentenceError]]:
    """``(line, record)`` per sentence, ``line`` the 1-based line of its first token. A sentence
    with a malformed token line comes as a [`ConlluSentenceError`][hf_multitask.conllu.ConlluSentenceError] at that line, saying
    which field is wrong."""
    path = Path(path)
    record: dict[str, Any] = {}
    problem: str | None = None
    first = 0
    bad_line = 0
    count = 0

    def finish() -> tuple[int, dict[str, Any] | ConlluSentenceError]:
        nonlocal count
        count += 1
        if problem is not None:
            bad = ConlluSentenceError()
            bad.problem = problem
            return bad_line, bad
        record.setdefault("id", str(count))
        return first, record

    # lines (UTF-8, line endings, bad bytes named by line) come from the one reading layer
    for number, line in iter_lines(path):
        if not line.strip():
            if any(record.get(c) for c in _FIELDS) or problem is not None:
                yield finish()
            record, problem, first, bad_line = {}, None, 0, 0
            continue
        if line.startswith("#") and not any(record.get(c) for c in _FIELDS):
            key, _, value = line[1:].partition("=")
            if key.strip() == "sent_id" and value.strip():
                record["id"] = value.strip()
            continue
        fields = line.split("\t")
        if not first:
            first = number
        reason = None
        if len(fields) != 10:
            reason = f"{len(fields)} tab-separated fields, CoNLL-U has 10 (the sentence is skipped)"
        elif "-" in fields[0] or "." in fields[0]:  # multiword token or empty node: no tag of its own
            continue
        elif not fields[0].isdigit():
            reason = f"field ID {fields[0]!r} is not a word index (the sentence is skipped)"
        elif not fields[1]:
            reason = "field FORM is empty (the sentence is skipped)"
        if reason is not None:
            if problem is None:
                problem, bad_line = reason, number
            continue
        for column, index in _FIELDS.items():
            record.setdefault(column, []).append(fields[index])
    if any(record.get(c) for c in _FIELDS) or problem is not None:
        yield finish()
