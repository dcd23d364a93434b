import os
import sys
from pathlib import Path

from hypothesis import settings

# tests import the shared helper `oracle` from this folder
sys.path.insert(0, str(Path(__file__).parent))

# stderr is part of the CLI contract the tests check (one-line errors): no progress
# lines there, whose number depends on the machine's speed (tests of progress unset it)
os.environ["COMPRESS_IR_PROGRESS"] = "off"

# CI must not flake: a fixed example sequence there, fresh exploration elsewhere.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")
