"""Regenerates dcompress/methods/catalog.json from the registered method classes.

    python tools/gen_method_catalog.py

`dcompress methods` reads that file so that it answers without importing torch;
tests/unit/test_registry.py fails when the file is stale.
"""
from __future__ import annotations

import json

from dcompress.registry import CATALOG, build_catalog


def main() -> None:
    CATALOG.write_text(json.dumps(build_catalog(), indent=1) + "\n")
    print(f"wrote {CATALOG}")


if __name__ == "__main__":
    main()
