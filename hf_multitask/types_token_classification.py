"""Token classification (tagging): one label per word, predicted from the word's first sub-token."""

from __future__ import annotations

from typing import Any

try:  # only to encode datasets: a saved model loads and runs without it (remote code, see hf_multitask.hub)
    import datasets
except ImportError:  # pragma: no cover - a dependency of the package
    datasets = None  # type: ignore[assignment]
import numpy as np
import torch
from torch import nn

from .heads import MLPHead
from .task_types import IGNORE_INDEX, TaskType, register_task_type, soft_cross_entropy, softmax

__all__ = ["TokenClassificationType"]


def _words(value: Any) -> list[str]:
    if isinstance(value, str):
        return value.split()
    return [str(w) for w in value]


@register_task_type
class TokenClassificationType(TaskType):
    """Word-level labels (POS tags, BIO entity tags) over the encoder's token states.

    - **Data**: the one text column holds the words (a list, or a whitespace-separated string
      in a TSV/CSV file); the label column one tag per word (names from ``label_names``, or
      class indices). CoNLL-U files are read by [`hf_multitask.conllu.read_conllu()`][hf_multitask.conllu.read_conllu].
    - **Encoding**: words are tokenised with ``is_split_into_words=True`` (a fast tokenizer is
      needed for the word alignment). Each word's tag goes on its first sub-token; the other
      sub-tokens and the special tokens get the ignore index -100, or, with
      ``subword_labels="all"``, every sub-token gets its word's tag (predictions still read the
      first). ``word_mask`` marks first sub-tokens. Words cut off by ``max_length`` get no
      prediction and are not scored.
    - **Model**: a linear / MLP head (``head_type``) on every token state; cross-entropy over
      the labelled positions only (padding and ignored sub-tokens do not count).
    - **Metrics**: ``accuracy`` over words, or ``entity_f1`` (seqeval's entity-level F1, for
      BIO/IOB2 tag sets); the score is the metric itself.
    """

    name = "token_classification"
    card_type = "token-classification"
    metrics = ("accuracy", "entity_f1")
    label_dtype = "int64"
    sequence_labels = True

    def validate(self, spec):
        if len(spec.text_columns) != 1:
            raise ValueError(f"TaskSpec {spec.name!r}: token classification takes one text column (the words), got {spec.text_columns!r}")
        if spec.num_labels < 2:
            raise ValueError(f"TaskSpec {spec.name!r}: token classification needs num_labels >= 2, got {spec.num_labels}")
        if spec.label_range is not None or spec.pair_encoding is not None:
            raise ValueError(f"TaskSpec {spec.name!r}: label_range and pair_encoding do not apply to token classification")
        if spec.metric == "entity_f1" and not spec.label_names:
            raise ValueError(f"TaskSpec {spec.name!r}: entity_f1 needs label_names (BIO tags such as B-PER, I-PER, O)")

    # --- data ----------------------------------------------------------------------------------
    def text_feature(self, spec, column=""):
        return datasets.Sequence(datasets.Value("string"))

    def label_feature(self, spec):
        return datasets.Sequence(datasets.Value("int64"))

    def check_text(self, spec, value, column=""):
        if value is None:
            return None, "empty text"
        words = _words(value)
        if not words or any(not w.strip() for w in words):
            return None, "empty text" if not words else "an empty word"
        return words, None

    def parse_label(self, spec, raw):
        if raw is None:
            return None, "empty label"
        tags = _words(raw) if isinstance(raw, str) else list(raw)
        out = []
        for tag in tags:
            if isinstance(tag, str) and spec.label_names and tag in spec.label_names:
                out.append(spec.label_names.index(tag))
                continue
            try:
                value = int(tag)
            except (TypeError, ValueError):
                known = f"; known tags: {list(spec.label_names)}" if spec.label_names else ""
                return None, f"tag {tag!r} is not a known tag{known}"
            if not 0 <= value < spec.num_labels:
                return None, f"tag {tag!r} is out of range 0..{spec.num_labels - 1}"
            out.append(value)
        if not out:
            return None, "empty label"
        return out, None

    def check_row(self, spec, texts: dict[str, Any], label: Any) -> str | None:
        words = texts[spec.text_columns[0]]
        if len(words) != len(label):
            return f"{len(words)} words but {len(label)} tags"
        return None

    def encode_batch(self, spec, batch, tokenizer, pair_encoding, max_length):
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(
                f"Task {spec.name!r}: token classification needs a fast tokenizer (word alignment); got {type(tokenizer).__name__}"
            )
        words = [_words(w) for w in batch[spec.text_columns[0]]]
        enc = tokenizer(words, is_split_into_words=True, truncation=max_length is not None, max_length=max_length, padding=False)
        out = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        masks, labels = [], []
        for i in range(len(words)):
            ids = enc.word_ids(i)
            mask, seen = [], set()
            for w in ids:
                first = w is not None and w not in seen
                mask.append(1 if first else 0)
                if w is not None:
                    seen.add(w)
            masks.append(mask)
            if "label" in batch:
                tags = batch["label"][i]
                row = []
                for w, m in zip(ids, mask):
                    if w is None or (not m and spec.subword_labels == "first"):
                        row.append(IGNORE_INDEX)
                    else:
                        row.append(int(tags[w]))
                labels.append(row)
        out["word_mask"] = masks
        if "label" in batch:
            out["labels"] = labels
        return out

    # --- the model -------------------------------------------------------------------------------
    def build_head(self, spec, config, hidden):
        if config.head_type == "lstm":
            raise ValueError(f"Task {spec.name!r}: head_type 'lstm' is for sentence tasks; token classification takes 'linear' or 'mlp'")
        sizes = config.head_hidden_sizes if config.head_type == "mlp" else []
        return MLPHead(hidden, spec.num_labels, sizes, config.head_dropout)

    def logits(self, model, spec, inputs):
        input_ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        mask = mask if mask is not None else torch.ones_like(input_ids)
        return model.heads[spec.name](model.encode_tokens(input_ids, mask, inputs.get("token_type_ids")))

    def loss_terms(self, spec, labels):
        return int((labels != IGNORE_INDEX).sum())  # tagged words; other sub-tokens and padding hold -100

    def shares_states(self, model, spec, batch):
        return True

    def logits_from_states(self, model, spec, states, attention_mask):
        return model.heads[spec.name](states)

    def loss(self, spec, logits, labels):
        labels = labels.long().view(-1)
        flat = logits.float().reshape(-1, logits.shape[-1])
        total = nn.functional.cross_entropy(flat, labels, ignore_index=IGNORE_INDEX, reduction="sum")
        count = (labels != IGNORE_INDEX).sum().clamp_min(1)
        return total / count

    def teacher_outputs(self, spec, logits, batch):
        """Each example's per-token logits, ``(its token count, num_labels)``: the padding is cut off."""
        lengths = np.asarray(batch["attention_mask"]).sum(-1) if "attention_mask" in batch else [np.shape(logits)[1]] * len(logits)
        return [np.asarray(row[: int(n)], dtype=np.float32) for row, n in zip(np.asarray(logits), lengths)]

    def distillation_loss(self, spec, logits, labels, teacher, gold_weight, temperature=1.0):
        """Per tagged token, cross-entropy to ``gold_weight * onehot(gold tag) + (1 - gold_weight)
        * softmax(teacher / T)``, averaged over the tagged tokens (other sub-tokens and padding
        hold -100 and are left out)."""
        if gold_weight >= 1.0:
            return self.loss(spec, logits, labels)
        length = logits.shape[1]
        if teacher.shape[1] < length:  # the batch was padded past its longest example (pad_to_multiple_of)
            teacher = nn.functional.pad(teacher, (0, 0, 0, length - teacher.shape[1]), value=float("nan"))
        return soft_cross_entropy(logits, labels, teacher[:, :length], gold_weight, temperature)

    # --- predictions and metrics -------------------------------------------------------------------
    @staticmethod
    def _rows(values: np.ndarray, batch: dict[str, Any]) -> np.ndarray:
        mask = np.asarray(batch["word_mask"]).astype(bool)
        out = np.empty(len(values), dtype=object)
        for i in range(len(values)):
            out[i] = np.asarray(values[i][: mask.shape[1]][mask[i]], dtype=np.int64)
        return out

    def predictions(self, spec, logits, batch):
        if "word_mask" not in batch:
            raise ValueError(f"Task {spec.name!r}: the batch has no word_mask (encode the data with hf_multitask.encode_task)")
        return self._rows(np.asarray(logits).argmax(-1), batch)

    def gold(self, spec, labels, batch):
        return self._rows(np.asarray(labels), batch)

    def compute_metrics(self, spec, predictions, labels):
        metric = spec.metric or "accuracy"
        if metric == "accuracy":
            pred = np.concatenate([np.asarray(p) for p in predictions]) if len(predictions) else np.zeros(0)
            gold = np.concatenate([np.asarray(g) for g in labels]) if len(labels) else np.zeros(0)
            if gold.size == 0:
                raise ValueError(f"Task {spec.name!r}: no labelled words to score")
            value = float(np.mean(pred == gold))
        else:
            try:
                from seqeval.metrics import f1_score
            except ImportError:  # pragma: no cover - depends on the environment
                raise ImportError("entity_f1 needs the seqeval package: pip install seqeval") from None

            names = spec.label_names
            value = float(f1_score([[names[i] for i in g] for g in labels], [[names[i] for i in p] for p in predictions]))
        return {metric: value, "score": value}

    def format_prediction(self, spec, prediction):
        names = spec.label_names
        return " ".join(names[int(i)] if names else str(int(i)) for i in prediction)

    def pipeline_output(self, spec, logits, batch, raw):
        probs = softmax(np.asarray(logits)[0])
        mask = np.asarray(batch["word_mask"])[0].astype(bool)
        firsts = probs[: mask.shape[0]][mask]
        words = raw[spec.text_columns[0]]
        out = []
        for word, p in zip(words, firsts):  # words cut off by max_length get no answer
            index = int(p.argmax())
            out.append({"word": word, "tag": spec.label_names[index] if spec.label_names else index, "score": float(p[index])})
        return out
