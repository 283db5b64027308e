"""Worker for the DDP equivalence test: trains a tiny model and saves the final parameters.

Run as ``python -m torch.distributed.run --nproc_per_node N ddp_worker.py OUT VOCAB BATCH AGG``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from conftest import deterministic_model, toy_encoded  # noqa: E402
from transformers import BertTokenizerFast  # noqa: E402

import hf_multitask as hm  # noqa: E402


def main() -> None:
    out, vocab, batch, aggregator = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    tokenizer = BertTokenizerFast(vocab_file=vocab, do_lower_case=True)
    model = deterministic_model()
    data = toy_encoded(tokenizer, model)
    args = hm.MultitaskTrainingArguments(
        output_dir=os.path.join(os.path.dirname(out), "run"),
        per_device_train_batch_size=batch,
        max_steps=3,
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        aggregator=aggregator,
        telemetry_steps=1,
    )
    trainer = hm.MultitaskTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    trainer.train()
    if trainer.args.process_index == 0:
        torch.save(
            {
                "world": trainer.args.world_size,
                "params": {n: p.detach().clone() for n, p in model.named_parameters()},
                "history": trainer.telemetry.history,
            },
            out,
        )


if __name__ == "__main__":
    main()
