"""`python -m dcompress ...` (and `torchrun ... -m dcompress ...`): the `dcompress` command."""
from .cli import main

main()
