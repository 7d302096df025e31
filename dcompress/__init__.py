"""dcompress: compress image-classification WebDataset shards into small training sets.

Public API:
    load(path)                  -> CompressedDataset (torch Dataset of image, soft label, hard label)
    distill(urls, method, ...)  -> run report dict (writes shards + manifest.json)
    evaluate(out, test, ...)    -> accuracy report dict
    list_methods()              -> registered method classes
"""
__version__ = "0.1.0"


def load(path):
    from .loader import load as _load

    return _load(path)


def distill(urls, method, **kwargs):
    from .api import distill as _distill

    return _distill(urls, method, **kwargs)


def evaluate(out, test, **kwargs):
    from .train.evaluate import evaluate as _evaluate

    return _evaluate(out, test, **kwargs)


def list_methods():
    from .registry import list_methods as _list

    return _list()
