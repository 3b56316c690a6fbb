"""Start the grid, home and battery agents and drive coordination cycles.

python run_distributed_simulation.py --help
"""

import sys

from agents.coordinator import main

if __name__ == "__main__":
    sys.exit(main())
