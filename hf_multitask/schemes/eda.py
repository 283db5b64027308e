"""EDA augmentation (Wei & Zou 2019) and class rebalancing for classification tasks."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Mapping

import datasets

from ..tasks import TaskSpec

SynonymSource = Callable[[str], list[str]] | Mapping[str, list[str]]


def wordnet_synonyms() -> Callable[[str], list[str]]:
    """Synonyms from WordNet through nltk; a clear error when nltk or its data is missing."""
    try:
        from nltk.corpus import wordnet
    except ImportError as err:
        raise ImportError(
            "EDA synonyms need a source: `pip install nltk` and put the WordNet corpus where nltk finds it "
            "(nltk.download('wordnet') needs the network), or pass synonyms={word: [synonyms]} / a callable."
        ) from err
    try:
        wordnet.synsets("good")
    except LookupError as err:
        raise LookupError(
            "nltk is installed but the WordNet data is not: install it into an nltk_data folder (it cannot be downloaded "
            "here), or pass synonyms={word: [synonyms]} / a callable to EDA."
        ) from err

    def lookup(word: str) -> list[str]:
        names = {lemma.name().replace("_", " ").lower() for s in wordnet.synsets(word) for lemma in s.lemmas()}
        names.discard(word.lower())
        return sorted(names)

    return lookup


class EDA:
    """Easy Data Augmentation: synonym replacement (SR), random insertion (RI), random swap
    (RS) and random deletion (RD).

    For a sentence of n words, SR replaces ``max(1, round(alpha_sr * n))`` words that have
    synonyms, RI inserts as many synonyms of random words at random positions, RS swaps as
    many random pairs, and RD deletes each word with probability ``p_rd`` (keeping at least
    one). Every operation is seeded (``seed``) and labels are never touched.

    Args:
        synonyms: ``{word: [synonyms]}`` or a callable ``word -> [synonyms]``; by default
            WordNet through nltk (a clear error when unavailable — nothing is downloaded).
    """

    def __init__(
        self,
        synonyms: SynonymSource | None = None,
        alpha_sr: float = 0.1,
        alpha_ri: float = 0.1,
        alpha_rs: float = 0.1,
        p_rd: float = 0.1,
        seed: int = 0,
    ) -> None:
        for name, value in (("alpha_sr", alpha_sr), ("alpha_ri", alpha_ri), ("alpha_rs", alpha_rs), ("p_rd", p_rd)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if synonyms is None:
            synonyms = wordnet_synonyms()
        self._synonyms = synonyms.get if isinstance(synonyms, Mapping) else synonyms
        self.alpha_sr, self.alpha_ri, self.alpha_rs, self.p_rd = alpha_sr, alpha_ri, alpha_rs, p_rd
        self.rng = random.Random(seed)

    def synonyms(self, word: str) -> list[str]:
        """The word's synonyms from the table (none for a stop word)."""
        return [s for s in (self._synonyms(word.lower()) or []) if s.lower() != word.lower()]

    @staticmethod
    def _count(alpha: float, n: int) -> int:
        return max(1, round(alpha * n)) if alpha > 0 and n > 0 else 0

    def synonym_replacement(self, words: list[str]) -> list[str]:
        """EDA's SR: replace up to ``alpha_sr`` of the words by a synonym."""
        words = list(words)
        candidates = [i for i, w in enumerate(words) if self.synonyms(w)]
        self.rng.shuffle(candidates)
        for i in candidates[: self._count(self.alpha_sr, len(words))]:
            words[i] = self.rng.choice(self.synonyms(words[i]))
        return words

    def random_insertion(self, words: list[str]) -> list[str]:
        """EDA's RI: insert a synonym of a random word at a random place, ``alpha_ri`` of the length times."""
        words = list(words)
        with_syn = [w for w in words if self.synonyms(w)]
        for _ in range(self._count(self.alpha_ri, len(words)) if with_syn else 0):
            words.insert(self.rng.randint(0, len(words)), self.rng.choice(self.synonyms(self.rng.choice(with_syn))))
        return words

    def random_swap(self, words: list[str]) -> list[str]:
        """EDA's RS: swap two random words, ``alpha_rs`` of the length times."""
        words = list(words)
        if len(words) < 2:
            return words
        for _ in range(self._count(self.alpha_rs, len(words))):
            i, j = self.rng.sample(range(len(words)), 2)
            words[i], words[j] = words[j], words[i]
        return words

    def random_deletion(self, words: list[str]) -> list[str]:
        """EDA's RD: delete each word with probability ``p_rd`` (never every word)."""
        if len(words) <= 1 or self.p_rd == 0:
            return list(words)
        kept = [w for w in words if self.rng.random() >= self.p_rd]
        return kept or [self.rng.choice(words)]

    def augment(self, sentence: str) -> str:
        """One augmented copy: one of the four operations, chosen at random."""
        words = sentence.split()
        op = self.rng.choice([self.synonym_replacement, self.random_insertion, self.random_swap, self.random_deletion])
        return " ".join(op(words))

    def rebalance(self, dataset: datasets.Dataset, spec: TaskSpec) -> datasets.Dataset:
        """Add EDA copies of minority-class examples until every class matches the largest.

        Works on loaded (not tokenised) data: each copy augments every text column of a
        randomly chosen example of its class and keeps its label; ids get a ``-eda{k}`` suffix.
        """
        if not spec.task_type.label_classes or spec.task_type.sequence_labels:
            raise ValueError(f"Task {spec.name!r} is a {spec.kind} task: EDA rebalancing is for sentence classification")
        labels = dataset["label"]
        counts = Counter(labels)
        target = max(counts.values())
        by_class: dict[int, list[int]] = {}
        for i, y in enumerate(labels):
            by_class.setdefault(y, []).append(i)
        new: dict[str, list] = {c: [] for c in dataset.column_names}
        k = 0
        for y in sorted(by_class):
            for _ in range(target - counts[y]):
                row = dataset[self.rng.choice(by_class[y])]
                for c in dataset.column_names:
                    if c in spec.text_columns:
                        new[c].append(self.augment(row[c]))
                    elif c == "id":
                        new[c].append(f"{row['id']}-eda{k}")
                    else:
                        new[c].append(row[c])
                k += 1
        if not k:
            return dataset
        return datasets.concatenate_datasets([dataset, datasets.Dataset.from_dict(new, features=dataset.features)])
