"""A built-in demo data set for the reference trio, written for this package (no third-party text).

``recipes/train_pcgrad.py --demo`` writes these examples as CS224N-format files and trains on
them: a one-minute, network-free tour of the whole recipe (training, evaluation, ``best/``,
``metrics.json``, prediction files, the conflict plot). The examples are far too few to learn
the tasks well; they exist to show the machinery working, not to measure anything.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEMO_SST", "DEMO_QUORA", "DEMO_STS", "write_demo_data"]

# (sentence, sentiment 0 = very negative .. 4 = very positive)
DEMO_SST: list[tuple[str, int]] = [
    ("a tedious , joyless slog that never ends", 0),
    ("the worst film i have sat through in years", 0),
    ("an insult to anyone who buys a ticket", 0),
    ("painfully unfunny from the first scene to the last", 0),
    ("a complete mess with nothing to recommend it", 0),
    ("the plot collapses long before the end", 0),
    ("dreadful acting and a script to match", 0),
    ("a loud , empty and exhausting experience", 0),
    ("the story drags and the jokes fall flat", 1),
    ("a dull film with a few nice moments", 1),
    ("the cast tries hard but the material is thin", 1),
    ("too long and rarely as clever as it thinks", 1),
    ("a forgettable sequel that adds little", 1),
    ("it has its heart in the right place but not much else", 1),
    ("the second half loses all the energy of the first", 1),
    ("a weak ending spoils a decent setup", 1),
    ("an ordinary thriller that does what you expect", 2),
    ("some scenes work and some do not", 2),
    ("neither good nor bad , just there", 2),
    ("a perfectly average way to spend two hours", 2),
    ("the film is uneven but watchable", 2),
    ("it looks fine and sounds fine", 2),
    ("a routine drama with a familiar story", 2),
    ("competent , tidy and a little bland", 2),
    ("a warm and charming little comedy", 3),
    ("the lead performance is strong and honest", 3),
    ("a smart script with plenty of good laughs", 3),
    ("an enjoyable ride with a satisfying ending", 3),
    ("well made and often quite moving", 3),
    ("a solid film that rewards patience", 3),
    ("the music and the images work well together", 3),
    ("a pleasant surprise with a likeable cast", 3),
    ("a brilliant , moving and beautifully acted film", 4),
    ("one of the best films of the year", 4),
    ("a masterpiece that stays with you for days", 4),
    ("superb writing and a stunning final act", 4),
    ("an absolute joy from start to finish", 4),
    ("wonderful , funny and full of life", 4),
    ("a gripping story told with real skill", 4),
    ("every scene is a small delight", 4),
]

# (question 1, question 2, is_duplicate)
DEMO_QUORA: list[tuple[str, str, int]] = [
    ("how do i learn to cook rice ?", "what is the best way to cook rice ?", 1),
    ("how can i improve my english writing ?", "what can i do to write better english ?", 1),
    ("what is the capital of france ?", "which city is the capital of france ?", 1),
    ("how do i start running every morning ?", "how can i build a habit of running in the morning ?", 1),
    ("why is the sky blue ?", "what makes the sky look blue ?", 1),
    ("how do i save money on groceries ?", "what are good ways to spend less on food shopping ?", 1),
    ("how can i sleep better at night ?", "what helps you get better sleep ?", 1),
    ("what is a good first programming language ?", "which programming language should a beginner learn first ?", 1),
    ("how do plants make food ?", "how does photosynthesis work in plants ?", 1),
    ("how do i fix a flat bike tire ?", "what is the way to repair a flat tyre on a bicycle ?", 1),
    ("how can i learn to play guitar ?", "what is the fastest way to learn the guitar ?", 1),
    ("what causes earthquakes ?", "why do earthquakes happen ?", 1),
    ("how do i make friends in a new city ?", "how can i meet people after moving to a new town ?", 1),
    ("is coffee bad for your health ?", "does drinking coffee harm your health ?", 1),
    ("how do i clean a cast iron pan ?", "what is the right way to wash a cast iron skillet ?", 1),
    ("what should i pack for a beach trip ?", "what do i need to bring to the beach ?", 1),
    ("how long does it take to learn spanish ?", "how many months does learning spanish take ?", 1),
    ("how do vaccines work ?", "what does a vaccine do inside the body ?", 1),
    ("what is the best way to study for exams ?", "how should i prepare for my exams ?", 1),
    ("how do i grow tomatoes at home ?", "how can i grow tomato plants in my garden ?", 1),
    ("how do i learn to cook rice ?", "how do i learn to drive a car ?", 0),
    ("what is the capital of france ?", "what is the population of france ?", 0),
    ("why is the sky blue ?", "why is the sea salty ?", 0),
    ("how can i sleep better at night ?", "how can i wake up earlier ?", 0),
    ("what is a good first programming language ?", "what is a good first car to buy ?", 0),
    ("how do plants make food ?", "how do birds build nests ?", 0),
    ("how can i learn to play guitar ?", "how can i learn to play chess ?", 0),
    ("what causes earthquakes ?", "what causes thunder ?", 0),
    ("is coffee bad for your health ?", "is coffee more popular than tea ?", 0),
    ("how do i clean a cast iron pan ?", "how do i season a steak ?", 0),
    ("what should i pack for a beach trip ?", "where should i go for a beach trip ?", 0),
    ("how long does it take to learn spanish ?", "how long does it take to fly to spain ?", 0),
    ("how do vaccines work ?", "who invented the first vaccine ?", 0),
    ("what is the best way to study for exams ?", "what is the best way to relax after exams ?", 0),
    ("how do i grow tomatoes at home ?", "how do i store tomatoes ?", 0),
    ("how do i save money on groceries ?", "how do i invest my savings ?", 0),
    ("how do i start running every morning ?", "what shoes are best for running ?", 0),
    ("how do i make friends in a new city ?", "how do i find a flat in a new city ?", 0),
    ("how can i improve my english writing ?", "how can i improve my handwriting ?", 0),
    ("how do i fix a flat bike tire ?", "how do i choose a new bike ?", 0),
]

# (sentence 1, sentence 2, similarity 0.0 .. 5.0)
DEMO_STS: list[tuple[str, str, float]] = [
    ("a man is playing a guitar .", "a man plays the guitar .", 5.0),
    ("a woman is slicing an onion .", "a woman cuts an onion into slices .", 4.8),
    ("two dogs are running in a field .", "two dogs run across a field .", 4.8),
    ("a child is riding a bike .", "a kid rides a bicycle .", 4.6),
    ("the train arrived late this morning .", "this morning the train came in late .", 4.8),
    ("a cat is sleeping on the sofa .", "a cat sleeps on a couch .", 4.6),
    ("a man is cooking pasta .", "a man is making spaghetti .", 4.0),
    ("a girl is reading a book in the park .", "a girl reads in the park .", 4.0),
    ("the shop closes at six .", "the store shuts at six o'clock .", 4.6),
    ("a boy is kicking a ball .", "a boy is playing football .", 3.8),
    ("a woman is singing on stage .", "a woman performs a song .", 3.6),
    ("the sun is setting over the sea .", "the sun goes down over the ocean .", 4.6),
    ("a man is playing a guitar .", "a man is playing a piano .", 2.6),
    ("a woman is slicing an onion .", "a woman is slicing a tomato .", 2.8),
    ("two dogs are running in a field .", "two horses are running in a field .", 2.6),
    ("a child is riding a bike .", "a child is riding a horse .", 2.4),
    ("a cat is sleeping on the sofa .", "a dog is sleeping on the sofa .", 2.8),
    ("a man is cooking pasta .", "a man is eating pasta .", 2.6),
    ("a girl is reading a book in the park .", "a girl is writing a letter in the park .", 2.2),
    ("the train arrived late this morning .", "the bus arrived late this morning .", 2.8),
    ("a boy is kicking a ball .", "a boy is throwing a ball .", 3.0),
    ("the shop closes at six .", "the shop opens at six .", 2.0),
    ("a woman is singing on stage .", "a woman is dancing on stage .", 2.4),
    ("the sun is setting over the sea .", "the moon is rising over the sea .", 2.0),
    ("a man is playing a guitar .", "a woman is cutting bread .", 0.2),
    ("a woman is slicing an onion .", "two men are climbing a mountain .", 0.0),
    ("two dogs are running in a field .", "the stock market fell today .", 0.0),
    ("a child is riding a bike .", "a chef is cooking soup .", 0.2),
    ("a cat is sleeping on the sofa .", "the plane took off on time .", 0.0),
    ("a man is cooking pasta .", "a girl is swimming in a lake .", 0.0),
    ("a girl is reading a book in the park .", "a man repairs a car engine .", 0.2),
    ("the train arrived late this morning .", "a baby is laughing .", 0.0),
    ("a boy is kicking a ball .", "an old man is painting a fence .", 0.4),
    ("the shop closes at six .", "a bird sits on a branch .", 0.0),
    ("a woman is singing on stage .", "a man is fixing a roof .", 0.2),
    ("the sun is setting over the sea .", "a student is taking an exam .", 0.0),
    ("a man plays the violin .", "a man is playing a musical instrument .", 3.4),
    ("people are walking in the rain .", "people walk outside while it rains .", 4.6),
    ("a chef is chopping vegetables .", "someone is preparing food .", 3.2),
    ("a plane is landing .", "an airplane is coming down to land .", 4.6),
]


def write_demo_data(folder: str | Path) -> Path:
    """Write the demo set as ``ids-sst-train.csv``, ``quora-train.csv`` and ``sts-train.csv``
    (CS224N format) into ``folder`` and return it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tables = {
        "ids-sst-train.csv": (["id", "sentence", "sentiment"], [(f"demo-sst-{i}", s, y) for i, (s, y) in enumerate(DEMO_SST)]),
        "quora-train.csv": (
            ["id", "sentence1", "sentence2", "is_duplicate"],
            [(f"demo-qqp-{i}", a, b, float(y)) for i, (a, b, y) in enumerate(DEMO_QUORA)],
        ),
        "sts-train.csv": (
            ["id", "sentence1", "sentence2", "similarity"],
            [(f"demo-sts-{i}", a, b, y) for i, (a, b, y) in enumerate(DEMO_STS)],
        ),
    }
    for name, (header, rows) in tables.items():
        lines = ["\t".join(["", *header])] + ["\t".join([str(i), *(str(x) for x in row)]) for i, row in enumerate(rows)]
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder
