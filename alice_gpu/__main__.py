"""``python -m alice_gpu``: the same command line as ``alice-gpu``."""

from .cli import main

main()
