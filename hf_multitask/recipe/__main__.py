"""``python -m hf_multitask.recipe``: the recipe's command line (as ``hf-multitask train``)."""

from .run import main

main()
