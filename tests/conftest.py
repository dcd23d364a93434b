import sys
from pathlib import Path

# tests import the shared helper `oracle` from this folder
sys.path.insert(0, str(Path(__file__).parent))
