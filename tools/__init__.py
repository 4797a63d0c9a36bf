"""``python -m tools.NAME`` runs a tool as ``python tools/NAME.py`` does: the tools import
their shared modules (argtypes, infer) by name, from this folder."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
