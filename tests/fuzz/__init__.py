"""Generated fuzz corpus of malformed inputs (see corpus.py); no binary fixtures on disk."""
