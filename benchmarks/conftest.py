import os
import sys

# benchmarks import their harness as a plain module
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
