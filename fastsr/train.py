"""`accelerate launch fastsr/train.py RECIPE [key=value ...]` (the same as `fastsr train`)."""

import os
import sys

if __name__ == "__main__":
    # Run as a script, Python puts this folder first on sys.path, where fastsr's own data/ and
    # models/ would shadow top-level packages of those names; import the installed package instead.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path = [p for p in sys.path if os.path.abspath(p or ".") != here]
    from fastsr.cli import main

    args = sys.argv[1:]
    debug = ["--debug"] if "--debug" in args else []
    sys.exit(main([*debug, "train", *[a for a in args if a != "--debug"]]))
