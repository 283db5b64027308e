"""Task types: the registry, token classification (CoNLL-U, alignment, loss, metrics, round
trips, training next to a sentence task) and a new type written here that plugs in."""

import numpy as np
import pytest
import torch
from conftest import assert_loads_without_package, assert_same_outputs, tiny_encoder_config, train_args, write_tsv
from torch import nn
from transformers import AutoModel

import hf_multitask as hm
from hf_multitask.task_types import IGNORE_INDEX, TaskType, get_task_type, register_task_type

POS = hm.TaskSpec("pos", "token_classification", num_labels=3, text_columns=("tokens",), label_column="tags", label_names=("N", "V", "O"))
NER = hm.TaskSpec("ner", "token_classification", num_labels=3, text_columns=("tokens",), label_column="tags",
                  label_names=("O", "B-PER", "I-PER"), metric="entity_f1")  # fmt: skip

CONLLU = """# newdoc id = d1
# sent_id = s-1
# text = I don't know
1\tI\tI\tPRON\tPRP\t_\t3\tnsubj\t_\t_
2-3\tdon't\t_\t_\t_\t_\t_\t_\t_\t_
2\tdo\tdo\tAUX\tVBP\t_\t4\taux\t_\t_
3\tn't\tnot\tPART\tRB\t_\t4\tadvmod\t_\t_
4\tknow\tknow\tVERB\tVB\t_\t0\troot\t_\t_
4.1\tknows\t_\t_\t_\t_\t_\t_\t_\t_

# sent_id = s-2
1\t#\t#\tSYM\tNFP\t_\t0\troot\t_\t_
2\t"\t"\tPUNCT\t``\t_\t1\tpunct\t_\t_

# sent_id = s-3
1\tbroken\tbroken\tADJ
2\tline\tline\tNOUN\tNN\t_\t0\troot\t_\t_

"""


def _model(tasks, seed=0, **kwargs):
    torch.manual_seed(seed)
    cfg = tiny_encoder_config("bert")
    cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.0
    return hm.MultitaskModel(hm.MultitaskConfig(encoder_config=cfg, tasks=tasks, head_dropout=0.0, **kwargs))


def _pos_rows(n=24):
    words = ["cat", "dog", "runs", "eats", "the", "a", "big", "sees"]
    tags = {"cat": "N", "dog": "N", "runs": "V", "eats": "V", "sees": "V", "the": "O", "a": "O", "big": "O"}
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        sent = [words[j] for j in rng.integers(0, len(words), size=3 + i % 4)]
        rows.append({"id": f"p{i}", "tokens": sent, "tags": [tags[w] for w in sent]})
    return rows


def _pos_dataset(n=24):
    import datasets

    rows = _pos_rows(n)
    return datasets.Dataset.from_list(rows)


# --------------------------------------------------------------------------- registry and spec
def test_built_in_types_are_registered_and_specs_validate_per_type():
    assert {"classification", "regression", "token_classification"} <= set(hm.task_types.TASK_TYPES)
    assert get_task_type("token_classification").card_type == "token-classification"
    with pytest.raises(ValueError, match="one text column"):
        hm.TaskSpec("t", "token_classification", num_labels=3, text_columns=("a", "b"))
    with pytest.raises(ValueError, match="label_names must be 3 distinct"):
        hm.TaskSpec("t", "token_classification", num_labels=3, text_columns=("a",), label_names=("x", "y"))
    with pytest.raises(ValueError, match="entity_f1 needs label_names"):
        hm.TaskSpec("t", "token_classification", num_labels=3, text_columns=("a",), metric="entity_f1")
    with pytest.raises(ValueError, match="kind must be a registered task type"):
        hm.TaskSpec("t", "ranking", num_labels=2, text_columns=("a",))
    assert hm.TaskSpec.from_dict(POS.to_dict()) == POS
    assert "label_names" not in hm.sst_task().to_dict(), "old configs keep their exact form"


# --------------------------------------------------------------------------- CoNLL-U
def test_conllu_reader_skips_multiword_tokens_and_empty_nodes_and_names_bad_lines(tmp_path):
    path = tmp_path / "t.conllu"
    path.write_text(CONLLU)
    spec = hm.TaskSpec("upos", "token_classification", num_labels=17, text_columns=("tokens",), label_column="upos",
                       label_names=hm.upos_task().label_names)  # fmt: skip
    with pytest.warns(hm.DataWarning, match=r"t.conllu: line 16: 4 tab-separated fields, CoNLL-U has 10"):
        ds = hm.load_task_data(spec, path, max_bad_fraction=0.5)
    assert ds["id"] == ["s-1", "s-2"]
    assert ds[0]["tokens"] == ["I", "do", "n't", "know"] and ds[1]["tokens"] == ["#", '"']
    names = spec.label_names
    assert [names[i] for i in ds[0]["label"]] == ["PRON", "AUX", "PART", "VERB"]
    with pytest.raises(hm.DataError, match="line 16: 4 tab-separated"):
        hm.load_task_data(spec, path, strict=True)


def test_real_upos_file_loads(shared_data):
    ds = hm.load_task_data(hm.upos_task(), shared_data / "en_ewt-ud-dev.conllu")
    assert len(ds) == 2001 and all(len(t) == len(y) for t, y in zip(ds["tokens"], ds["label"]))
    assert len({t for y in ds["label"] for t in y}) == 17


def test_tags_by_name_or_index_and_mismatched_lengths(tmp_path):
    rows = [["a", "cat runs", "N V"], ["b", "dog", "0"], ["c", "the cat", "O"], ["d", "a dog", "O Q"]]
    path = write_tsv(tmp_path / "pos.tsv", ["id", "tokens", "tags"], rows, cs224n=False)
    with pytest.warns(hm.DataWarning) as caught:
        ds = hm.load_task_data(POS, path, max_bad_fraction=0.6)
    assert ds["label"] == [[0, 1], [0]]
    text = " ".join(str(w.message) for w in caught)
    assert "2 words but 1 tags" in text and "tag 'Q' is not a known tag" in text


# --------------------------------------------------------------------------- encoding, loss
def test_labels_sit_on_first_sub_tokens_and_word_mask_marks_them(tokenizer):
    import datasets

    raw = datasets.Dataset.from_list([{"id": "0", "tokens": ["cat", "a"], "label": [0, 2]}])
    enc = hm.encode_task(raw, POS, tokenizer)[0]
    pieces = tokenizer.convert_ids_to_tokens(enc["input_ids"])
    assert pieces == ["[CLS]", "c", "##a", "##t", "a", "[SEP]"]
    assert enc["labels"] == [IGNORE_INDEX, 0, IGNORE_INDEX, IGNORE_INDEX, 2, IGNORE_INDEX]
    assert enc["word_mask"] == [0, 1, 0, 0, 1, 0]
    every = hm.TaskSpec(**{**POS.to_dict(), "subword_labels": "all", "label_names": POS.label_names})
    assert hm.encode_task(raw, every, tokenizer)[0]["labels"] == [IGNORE_INDEX, 0, 0, 0, 2, IGNORE_INDEX]


def test_loss_ignores_padding_and_non_first_sub_tokens(tokenizer):
    model = _model([POS]).eval()
    raw = hm.load_task_data(POS, _pos_dataset(6))
    batch = hm.MultitaskCollator(tokenizer.pad_token_id)([hm.encode_task(raw, POS, tokenizer)[i] for i in range(6)])
    out = model(task="pos", **batch)
    assert out.logits.shape == (*batch["input_ids"].shape, 3)
    keep = batch["labels"] != IGNORE_INDEX
    manual = nn.functional.cross_entropy(out.logits[keep], batch["labels"][keep])
    torch.testing.assert_close(out.loss, manual)
    logits = out.logits.detach().clone().requires_grad_()
    get_task_type("token_classification").loss(POS, logits, batch["labels"]).backward()
    assert logits.grad[~keep].abs().max() == 0 and logits.grad[keep].abs().sum() > 0
    assert bool((batch["attention_mask"] == 0).any()), "the batch has padding"


# --------------------------------------------------------------------------- metrics
def test_word_accuracy_and_entity_f1_against_hand_counts():
    tc = get_task_type("token_classification")
    pred = np.empty(2, dtype=object)
    gold = np.empty(2, dtype=object)
    pred[0], pred[1] = np.array([0, 1, 2]), np.array([1, 1])
    gold[0], gold[1] = np.array([0, 1, 1]), np.array([1, 0])
    assert tc.compute_metrics(POS, pred, gold) == {"accuracy": 3 / 5, "score": 3 / 5}
    # NER names O, B-PER, I-PER: gold entities (1,2) and (3,3); predicted (1,1) and (3,3) -> P = R = 1/2
    pred[0], pred[1] = np.array([0, 1, 0]), np.array([1, 0])
    gold[0], gold[1] = np.array([0, 1, 2]), np.array([1, 0])
    got = tc.compute_metrics(NER, pred, gold)
    assert got["entity_f1"] == pytest.approx(0.5) and got["score"] == got["entity_f1"]


# --------------------------------------------------------------------------- round trip, predict, train
def test_save_load_round_trip_predictions_back_to_words(tmp_path, tokenizer):
    model = _model([hm.sst_task(), POS]).eval()
    raw = hm.load_task_data(POS, _pos_dataset(8))
    enc = hm.encode_task(raw, POS, tokenizer)
    model.save_pretrained(tmp_path / "m")
    loaded = AutoModel.from_pretrained(tmp_path / "m", trust_remote_code=True).eval()
    batch = hm.MultitaskCollator(tokenizer.pad_token_id)([enc[i] for i in range(4)])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    assert_same_outputs(loaded(task="pos", **inputs).logits, model(task="pos", **inputs).logits, "pos")
    # batches of 3 sorted by length (the default) give each sentence its own words back, as file order does
    preds = hm.predict(model, enc, "pos", pad_token_id=tokenizer.pad_token_id, batch_size=3, progress=False)
    in_order = hm.predict(model, enc, "pos", pad_token_id=tokenizer.pad_token_id, batch_size=3, progress=False, by_length=False)
    assert [len(p) for p in preds.predictions] == [len(t) for t in raw["tokens"]]
    assert [list(p) for p in preds.predictions] == [list(p) for p in in_order.predictions] and preds.ids == in_order.ids
    assert [list(g) for g in preds.labels] == raw["label"]
    path = hm.write_predictions(tmp_path / "pos.csv", POS, preds)
    first = path.read_text().splitlines()[1]
    assert first.startswith("p0 , ") and set(first.split(" , ")[1].split()) <= {"N", "V", "O"}
    assert_loads_without_package(tmp_path / "m", "pos", inputs, model(task="pos", **inputs).logits)


def test_a_taggers_evaluation_loss_is_the_mean_over_its_tagged_words(tokenizer):
    """Batches of 3 sentences of 3-6 words: each batch's mean is weighted by its tagged words
    (TaskType.loss_terms), so the loss is the one over all eight sentences at once, in file
    order and by length alike."""
    model = _model([POS]).eval()
    enc = hm.encode_task(hm.load_task_data(POS, _pos_dataset(8)), POS, tokenizer)
    with torch.no_grad():
        whole = float(model(task="pos", **hm.MultitaskCollator(tokenizer.pad_token_id)([enc[i] for i in range(8)])).loss)
    for by_length in (False, True):
        out = hm.predict(model, enc, "pos", pad_token_id=tokenizer.pad_token_id, batch_size=3, progress=False, by_length=by_length)
        assert out.loss == pytest.approx(whole, rel=1e-5), by_length


def test_tagger_and_classifier_train_together_with_pcgrad(tmp_path, tokenizer):
    from conftest import toy_task_data

    model = _model([hm.sst_task(), POS])
    data = {
        "sst": hm.encode_task(toy_task_data(32)["sst"], hm.sst_task(), tokenizer),
        "pos": hm.encode_task(hm.load_task_data(POS, _pos_dataset(32)), POS, tokenizer),
    }
    before = hm.evaluate(model, data, pad_token_id=tokenizer.pad_token_id, progress=False)
    args = train_args(tmp_path, aggregator="pcgrad", max_steps=25, learning_rate=3e-3, per_device_train_batch_size=8)
    hm.MultitaskTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer).train()
    after = hm.evaluate(model, data, pad_token_id=tokenizer.pad_token_id, progress=False)
    for task in ("sst", "pos"):
        assert after[f"{task}_loss"] < before[f"{task}_loss"], (task, before, after)
    assert after["pos_accuracy"] > 0.8


# --------------------------------------------------------------------------- a type written here
class LengthParity(TaskType):
    """Toy type: is the sentence's word count even? Binary, from the [CLS] state."""

    name = "length_parity"
    card_type = "text-classification"
    metrics = ("accuracy",)

    def validate(self, spec):
        if spec.num_labels != 2:
            raise ValueError("length_parity is binary")

    def parse_label(self, spec, raw):
        return int(raw), None

    def encode_batch(self, spec, batch, tokenizer, pair_encoding, max_length):
        out = dict(tokenizer(batch[spec.text_columns[0]], truncation=True, max_length=max_length))
        out.pop("token_type_ids", None)
        if "label" in batch:
            out["labels"] = [len(t.split()) % 2 for t in batch[spec.text_columns[0]]]
        return out

    def build_head(self, spec, config, hidden):
        return nn.Linear(hidden, 2)

    def logits(self, model, spec, inputs):
        return model.heads[spec.name](model.encode(inputs["input_ids"], inputs.get("attention_mask")))

    def loss(self, spec, logits, labels):
        return nn.functional.cross_entropy(logits.float(), labels.long())

    def predictions(self, spec, logits, batch):
        return np.asarray(logits).argmax(-1)

    def compute_metrics(self, spec, predictions, labels):
        value = float(np.mean(np.asarray(predictions) == np.asarray(labels)))
        return {"accuracy": value, "score": value}


class _ParityWithMarker(LengthParity):
    """The toy type with a missing-label marker (-1) and nothing else about partial labels."""

    def missing_label(self, spec):
        return -1


@pytest.mark.parametrize(
    ("kind", "missing", "present"),
    [
        ("classification", IGNORE_INDEX, 2),
        ("regression", float("nan"), 3.5),
        ("multiple_choice", IGNORE_INDEX, 1),
        ("token_classification", IGNORE_INDEX, 0),
        ("marker_only", -1, 1),
    ],
)
def test_a_batch_has_labels_when_one_of_its_labels_is_not_the_missing_marker(kind, missing, present):
    """The trainer skips a task whose batch holds only the missing marker (partial labels).
    Every type answers from the count its loss averages over, so a type that only declares
    its marker (here the toy type with -1) skips an all-missing batch too."""
    task_type = _ParityWithMarker() if kind == "marker_only" else get_task_type(kind)
    spec = hm.TaskSpec("t", "classification", num_labels=5, text_columns=("text",))
    shape = (3, 4) if kind == "token_classification" else (3,)
    none = torch.full(shape, missing)
    some = none.clone()
    some.view(-1)[5 if kind == "token_classification" else 1] = present
    assert not task_type.has_labels(spec, none) and task_type.loss_terms(spec, none) == 0
    assert task_type.has_labels(spec, some) and task_type.loss_terms(spec, some) == 1
    assert task_type.loss_terms(spec, torch.full(shape, present)) == none.numel()


def test_a_type_without_a_marker_counts_one_label_per_example():
    spec = hm.TaskSpec("t", "classification", num_labels=2, text_columns=("text",))
    assert LengthParity().loss_terms(spec, torch.tensor([0, 1, 1])) == 3 and LengthParity().has_labels(spec, torch.tensor([0]))
    assert LengthParity().loss_terms(spec, torch.zeros(0, dtype=torch.long)) == 0
    assert not LengthParity().has_labels(spec, torch.zeros((2, 0), dtype=torch.long))


def test_a_new_type_plugs_in_through_the_registry(tmp_path, tokenizer):
    import datasets

    register_task_type(LengthParity)
    try:
        spec = hm.TaskSpec("parity", "length_parity", num_labels=2, text_columns=("text",))
        rows = [{"id": str(i), "text": " ".join(["a"] * (1 + i % 5)), "label": (1 + i % 5) % 2} for i in range(32)]
        enc = hm.encode_task(hm.load_task_data(spec, datasets.Dataset.from_list(rows)), spec, tokenizer)
        model = _model([hm.sst_task(), spec])
        args = train_args(tmp_path, aggregator="pcgrad", max_steps=3)
        from conftest import toy_task_data

        data = {"parity": enc, "sst": hm.encode_task(toy_task_data(16)["sst"], hm.sst_task(), tokenizer)}
        hm.MultitaskTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer).train()
        metrics = hm.evaluate(model, {"parity": enc}, pad_token_id=tokenizer.pad_token_id, progress=False)
        assert 0 <= metrics["parity_accuracy"] <= 1 and metrics["overall"] == metrics["parity_score"]
    finally:
        hm.task_types.TASK_TYPES.pop("length_parity", None)


# --------------------------------------------------------------------------- schemes per type
def _pos_batch(tokenizer, n=4):
    enc = hm.encode_task(hm.load_task_data(POS, _pos_dataset(n)), POS, tokenizer)
    return hm.MultitaskCollator(tokenizer.pad_token_id)([enc[i] for i in range(n)])


def test_smart_on_a_tagger_averages_over_word_positions(tokenizer):
    from hf_multitask.schemes.smart import symmetric_divergence

    p = torch.randn(2, 5, 3)
    q = torch.randn(2, 5, 3)
    mask = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 0, 0]], dtype=torch.bool)
    per = (p.log_softmax(-1).exp() * (p.log_softmax(-1) - q.log_softmax(-1))).sum(-1) + (
        q.log_softmax(-1).exp() * (q.log_softmax(-1) - p.log_softmax(-1))
    ).sum(-1)
    torch.testing.assert_close(symmetric_divergence(POS, p, q, mask), per[mask].mean())
    q2 = q.clone()
    q2[~mask] = 100.0  # what happens at unmasked positions does not count
    torch.testing.assert_close(symmetric_divergence(POS, p, q2, mask), per[mask].mean())
    model = _model([POS])
    smart = hm.schemes.SmartRegularizer(model, lambda_s=1.0, mu=1.0)
    batch = _pos_batch(tokenizer)
    out = model(task="pos", **batch)
    loss = smart(model, "pos", batch, out)
    assert torch.isfinite(loss) and loss >= out.loss - 1e-6
    loss.backward()


def test_eda_refuses_a_tagger_and_ensembles_average_token_probabilities(tokenizer):
    import datasets

    eda = hm.schemes.EDA(synonyms={"cat": ["kitty"]})
    with pytest.raises(ValueError, match="token_classification task: EDA rebalancing is for sentence classification"):
        eda.rebalance(datasets.Dataset.from_list([{"id": "0", "tokens": ["cat"], "label": [0]}]), POS)
    a, b = _model([POS], seed=0).eval(), _model([POS], seed=1).eval()
    batch = {k: v for k, v in _pos_batch(tokenizer).items() if k != "labels"}
    mean = hm.schemes.EnsembleModel([a, b])(task="pos", **batch).logits
    expected = torch.stack([m(task="pos", **batch).logits.softmax(-1) for m in (a, b)]).mean(0)
    torch.testing.assert_close(mean.exp(), expected, rtol=1e-5, atol=1e-6)


def test_recipe_trains_sst_and_upos_from_a_conllu_file(tiny_backbone, tiny_data, tmp_path):
    import shutil

    from conftest import recipe_flags

    from hf_multitask.recipe import RecipeError, run

    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(tiny_data / "ids-sst-train.csv", data / "ids-sst-train.csv")
    upos = {"N": "NOUN", "V": "VERB", "O": "DET"}
    lines = []
    for row in _pos_rows(24):
        lines.append(f"# sent_id = {row['id']}")
        lines += [f"{i}\t{w}\t{w}\t{upos[t]}\t_\t_\t0\tdep\t_\t_" for i, (w, t) in enumerate(zip(row["tokens"], row["tags"]), start=1)]
        lines.append("")
    (data / "en_ewt-ud-dev.conllu").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    metrics = run([*recipe_flags(tiny_backbone, data, out), "--tasks", "sst", "upos", "--validation_fraction", "0.25"])
    assert 0 <= metrics["eval_upos_accuracy"] <= 1 and "eval_sst_accuracy" in metrics
    written = [p for p in out.rglob("*upos*") if p.is_file()]
    assert written, "a prediction file for the tagger"
    body = written[0].read_text().splitlines()[1:]
    assert body and all(set(line.split(" , ")[1].split()) <= set(hm.upos_task().label_names) for line in body)
    conll = (out / "predictions" / "upos-dev-output.conll").read_text().split("\n\n")
    first = conll[0].splitlines()
    assert first[0].startswith("# sent_id = p") and all(len(line.split("\t")) == 3 for line in first[1:])
    assert {line.split("\t")[2] for block in conll for line in block.splitlines()[1:]} <= {"NOUN", "VERB", "DET"}
    model = AutoModel.from_pretrained(out / "best", trust_remote_code=True)
    assert model.get_task("upos") == hm.upos_task()
    with pytest.raises(RecipeError, match="upos: this task has no Hub preset; pass --data-dir"):
        run(["--tasks", "upos", "--output-dir", str(tmp_path / "o2")])


# --------------------------------------------------------------------------- multiple choice
MC = hm.TaskSpec("mc", "multiple_choice", num_labels=3, text_columns=("context", "choices"), label_column="answer")


def _mc_rows(n=24):
    rows = []
    for i in range(n):
        answer = ["cat", "dog", "sun"][i % 3]
        options = ["cat", "dog", "sun"] if i % 4 else ["cat", "dog"] if answer != "sun" else ["sun", "dog"]
        rows.append({"id": f"m{i}", "context": f"the {answer} is here", "choices": options, "answer": options.index(answer)})
    return rows


def _mc_data(tokenizer, n=24):
    import datasets

    return hm.encode_task(hm.load_task_data(MC, datasets.Dataset.from_list(_mc_rows(n))), MC, tokenizer)


def test_multiple_choice_scores_each_pair_and_masks_missing_choices(tokenizer):
    enc = _mc_data(tokenizer, 8)
    batch = hm.MultitaskCollator(tokenizer.pad_token_id)([enc[i] for i in range(4)])
    assert batch["input_ids"].shape[:2] == (4, 3) and batch["choice_mask"].tolist()[0] == [1, 1, 0]
    model = _model([MC]).eval()
    out = model(task="mc", **batch)
    assert out.logits.shape == (4, 3) and bool((out.logits[0, 2] <= -1e3).all())
    # each score is the head on the pooled (context, choice) sequence, alone
    single = {k: batch[k][1, 1:2] for k in ("input_ids", "attention_mask", "token_type_ids")}
    pooled = model.encode(single["input_ids"], single["attention_mask"], single["token_type_ids"])
    torch.testing.assert_close(out.logits[1, 1], model.heads["mc"](pooled)[0, 0], rtol=1e-5, atol=1e-6)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None), "padding choices give no NaN"
    with pytest.warns(hm.DataWarning, match="label 2 points past the row's 2 choices"):
        import datasets

        bad = [*_mc_rows(4), {"id": "x", "context": "c", "choices": ["a", "b"], "answer": 2}]
        hm.load_task_data(MC, datasets.Dataset.from_list(bad), max_bad_fraction=0.5)


def test_three_task_types_train_together_with_pcgrad_and_every_loss_falls(tmp_path, tokenizer):
    from conftest import toy_task_data

    model = _model([hm.sst_task(), POS, MC])
    data = {
        "sst": hm.encode_task(toy_task_data(32)["sst"], hm.sst_task(), tokenizer),
        "pos": hm.encode_task(hm.load_task_data(POS, _pos_dataset(32)), POS, tokenizer),
        "mc": _mc_data(tokenizer, 32),
    }
    before = hm.evaluate(model, data, pad_token_id=tokenizer.pad_token_id, progress=False)
    args = train_args(tmp_path, aggregator="pcgrad", max_steps=30, learning_rate=3e-3, per_device_train_batch_size=8)
    hm.MultitaskTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer).train()
    after = hm.evaluate(model, data, pad_token_id=tokenizer.pad_token_id, progress=False)
    for task in data:
        assert after[f"{task}_loss"] < before[f"{task}_loss"], (task, before, after)
    model.save_pretrained(tmp_path / "m")
    loaded = AutoModel.from_pretrained(tmp_path / "m", trust_remote_code=True).eval()
    model.eval()
    batch = hm.MultitaskCollator(tokenizer.pad_token_id)([data["mc"][i] for i in range(4)])
    assert_same_outputs(loaded(task="mc", **batch).logits, model(task="mc", **batch).logits, "mc")


# --------------------------------------------------------------------------- TaskSpec.from_dataset
def test_from_dataset_infers_the_type_from_features(tokenizer):
    import datasets

    cls_ds = datasets.Dataset.from_dict(
        {"text": ["good", "bad"], "label": [1, 0]},
        features=datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}),
    )
    spec = hm.TaskSpec.from_dataset(cls_ds, "text", name="senti")
    assert (spec.kind, spec.num_labels, spec.label_names) == ("classification", 2, ("neg", "pos"))
    tag_ds = datasets.Dataset.from_dict(
        {"tokens": [["a", "cat"]], "ner": [[0, 1]]},
        features=datasets.Features(
            {"tokens": datasets.Sequence(datasets.Value("string")), "ner": datasets.Sequence(datasets.ClassLabel(names=["O", "B-X"]))}
        ),  # fmt: skip
    )
    tagger = hm.TaskSpec.from_dataset(tag_ds, ["tokens"], "ner", name="ner", metric="entity_f1")
    assert (tagger.kind, tagger.label_names, tagger.metric) == ("token_classification", ("O", "B-X"), "entity_f1")
    reg = hm.TaskSpec.from_dataset(datasets.Dataset.from_dict({"a": ["x"], "b": ["y"], "score": [0.5]}), ["a", "b"], "score", name="sim")
    assert (reg.kind, reg.num_labels, reg.is_pair) == ("regression", 1, True)
    mc_ds = datasets.Dataset.from_list(_mc_rows(4)).cast_column("answer", datasets.ClassLabel(names=["A", "B", "C"]))
    mc = hm.TaskSpec.from_dataset(mc_ds, ["context", "choices"], "answer", name="mc")
    assert (mc.kind, mc.num_labels) == ("multiple_choice", 3)
    with pytest.raises(ValueError, match="plain integers, not a ClassLabel.*num_labels="):
        hm.TaskSpec.from_dataset(datasets.Dataset.from_dict({"t": ["x"], "y": [3]}), "t", "y", name="n")
    with pytest.raises(ValueError, match=r"columns \['nope'\] are not in the dataset"):
        hm.TaskSpec.from_dataset(cls_ds, "nope", name="n")
    # predictions come back as names: the names travel in the saved config
    model = _model([spec])
    assert model.config.get_task("senti").label_names == ("neg", "pos")
    assert get_task_type("classification").parse_label(spec, "pos") == (1, None)


def test_from_dataset_hub_id_is_a_clear_error_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(hm.DataError, match="Could not read the features of the Hub dataset 'someone/not-cached'.*datasets.Dataset"):
        hm.TaskSpec.from_dataset("someone/not-cached", "text")


def test_length_grouping_counts_every_choice_and_routed_models_pass_type_inputs(tokenizer):
    enc = _mc_data(tokenizer, 8)
    lengths = get_task_type("multiple_choice").lengths(enc)
    assert lengths == [sum(len(c) for c in ids) for ids in enc["input_ids"]] and min(lengths) > 3
    model = _model([POS, MC]).eval()
    routed = hm.RoutedMultitaskModel.from_models({"pos": model, "mc": model}).eval()
    batch = _pos_batch(tokenizer)
    assert_same_outputs(routed(task="pos", **batch).logits, model(task="pos", **batch).logits, "routed pos")
    choices = hm.MultitaskCollator(tokenizer.pad_token_id)([enc[i] for i in range(3)])
    assert_same_outputs(routed(task="mc", **choices).logits, model(task="mc", **choices).logits, "routed mc")


@pytest.mark.parametrize("capacity", ["pal", "lora"])
def test_pal_and_lora_serve_taggers_and_multiple_choice(tokenizer, capacity):
    model = _model([POS, MC])
    if capacity == "pal":
        model.add_pal(["pos", "mc"], rank=8, heads=2, init="xavier")
    else:
        model.add_lora(r=2, per_task=True)
    batches = {
        "pos": _pos_batch(tokenizer),
        "mc": hm.MultitaskCollator(tokenizer.pad_token_id)([_mc_data(tokenizer, 4)[i] for i in range(4)]),
    }
    for task, batch in batches.items():
        model.zero_grad()
        model(task=task, **batch).loss.backward()
        owned = [p for p in model.task_parameters(task) if p.grad is not None and p.grad.abs().sum() > 0]
        assert len(owned) > 2, f"{task}: its {capacity} and head get gradients"


def test_recipe_custom_yaml_tasks_of_any_type(tiny_backbone, tiny_data, tmp_path):
    import json

    import yaml
    from conftest import recipe_flags

    from hf_multitask.recipe import run

    data = tmp_path / "data"
    data.mkdir()
    (data / "mc.jsonl").write_text("\n".join(json.dumps(r) for r in _mc_rows(24)) + "\n")
    (data / "pos.jsonl").write_text("\n".join(json.dumps(r) for r in _pos_rows(24)) + "\n")
    config = tmp_path / "tasks.yaml"
    config.write_text(yaml.safe_dump({"custom_tasks": [
        {**MC.to_dict(), "train_file": "mc.jsonl"},
        {**POS.to_dict(), "train_file": "pos.jsonl"},
    ], "tasks": []}))  # fmt: skip
    metrics = run(["--config", str(config), *recipe_flags(tiny_backbone, data, tmp_path / "out"), "--validation_fraction", "0.25"])
    assert {"eval_mc_accuracy", "eval_pos_accuracy"} <= set(metrics)
    model = AutoModel.from_pretrained(tmp_path / "out" / "best", trust_remote_code=True)
    assert model.get_task("pos") == POS and model.get_task("mc") == MC
