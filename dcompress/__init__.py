"""dcompress: compress image-classification WebDataset shards into small training sets.

Public API (imported on first use, so `import dcompress` stays light):
    load(path, images="exact")  -> CompressedDataset (torch Dataset of image, soft label, hard label);
                                   images="member": the .png an outside reader decodes, not the .npy
    distill(urls, method, ...)  -> run report dict (writes shards + manifest.json)
    evaluate(out, test, ...)    -> accuracy report dict (test: urls, decoded as the set's input was)
    teacher(urls, out=...)      -> report dict (writes a teacher .pt + .json sidecar for --teacher)
    experts(urls, out=..., num_experts=N) -> buffer report (expert trajectories for mtt, datm)
    frontier(urls, test=..., out=...) -> accuracy-vs-bytes report (methods x budgets x labels, fair protocol)
    list_methods()              -> registered method classes
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__", "load", "distill", "evaluate", "experts", "frontier", "list_methods", "teacher"]

_API = {"load": ("io.loader", "load"), "distill": ("api", "distill"), "evaluate": ("api", "evaluate"),
        "experts": ("api", "experts"), "frontier": ("api", "frontier"),
        "list_methods": ("registry", "list_methods"), "teacher": ("api", "teacher")}


def __getattr__(name: str):
    """The real functions (signatures, docstrings) on first access: `help(dcompress.distill)`."""
    if name not in _API:
        raise AttributeError(f"module 'dcompress' has no attribute {name!r}")
    from importlib import import_module

    module, attr = _API[name]
    value = getattr(import_module(f".{module}", __name__), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
