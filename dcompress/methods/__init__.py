"""Built-in methods. Importing this package registers them (one line per method)."""
from . import herding, kcenter, random_subset  # noqa: F401
from . import dc  # noqa: F401  (dc and dsa)
from . import dm  # noqa: F401
from . import mtt  # noqa: F401
from . import datm  # noqa: F401
from . import dd  # noqa: F401
from . import dq  # noqa: F401
from . import rded  # noqa: F401
from . import sre2l  # noqa: F401
