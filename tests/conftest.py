import os
import sys
from pathlib import Path

from hypothesis import settings

# tests import the shared helper `oracle` from this folder
sys.path.insert(0, str(Path(__file__).parent))

# CI must not flake: a fixed example sequence there, fresh exploration elsewhere.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")
