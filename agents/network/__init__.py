"""The electrical network behind the feeder (``--network``): loading and checking it, homes from it, power flow.

Imported only when a network is asked for: pandapower and simbench take seconds to import.
"""

import logging

# pandapower announces at import, at INFO, that its optional plotly drawing is unavailable: not our concern
logging.getLogger("pandapower").setLevel(logging.WARNING)
