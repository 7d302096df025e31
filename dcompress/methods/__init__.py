"""Built-in methods. Importing this package registers them (one line per method)."""
from . import herding, kcenter, random  # noqa: F401
