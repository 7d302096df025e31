"""Input guards shared by the readers and the CLI (no imports: the CLI shows them without torch)."""

MAX_LABEL = 1_000_000       # labels at or above this are an input error (a class list that size is a bug)
MAX_PIXELS = 64_000_000     # default --max-pixels: decompression-bomb guard, checked from the header
MAX_SHARDS = 1_000_000      # a brace pattern expanding past this is a typo, not a dataset
