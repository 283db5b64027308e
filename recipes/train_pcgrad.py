"""Train a multitask model with gradient surgery.

    accelerate launch recipes/train_pcgrad.py --demo          # built-in examples, no data, no network
    accelerate launch recipes/train_pcgrad.py --data-dir ../shared/data --max-steps 20
    accelerate launch recipes/train_pcgrad.py --config recipes/configs/pcgrad_cosine.yaml

Every flag of hf_multitask.recipe's ModelArguments, DataArguments and
RecipeTrainingArguments (a transformers TrainingArguments) works here; `--help` lists them.
"""

from hf_multitask.recipe import main

if __name__ == "__main__":
    main()
