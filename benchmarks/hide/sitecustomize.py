"""Hide installed packages from every Python process of a run, as on a machine without them.

    FASTSR_HIDE=kornia,nvidia.dali PYTHONPATH=benchmarks/hide bash benchmarks/gpu_check.sh

Python imports `sitecustomize` at start-up from its path, so with this folder on PYTHONPATH each process
(and each it starts, which inherits the environment) refuses to import the modules named in FASTSR_HIDE and
their submodules, raising ModuleNotFoundError as a missing package does (this file stands in for any
sitecustomize of that Python's own meanwhile). benchmarks/gpu_check.sh puts this folder on PYTHONPATH itself
when FASTSR_HIDE is set.
"""

import os
import sys

HIDDEN = tuple(name.strip() for name in os.environ.get("FASTSR_HIDE", "").split(",") if name.strip())


class Hidden:
    """A meta-path finder consulted first: it refuses the hidden modules before any real finder finds them."""

    def find_spec(self, name, path=None, target=None):
        if any(name == hidden or name.startswith(hidden + ".") for hidden in HIDDEN):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by FASTSR_HIDE)", name=name)


if HIDDEN:
    sys.meta_path.insert(0, Hidden())
