"""``python -m hf_multitask.compare``: the comparison CLI."""

from .cli import main

main()
