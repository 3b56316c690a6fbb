"""Start a battery agent: python battery_agent_server.py [--agent-id battery_agent_1] [--port 8002]."""

from agents.battery import create_app
from agents.common.server import serve
from agents.common.settings import BatterySettings

if __name__ == "__main__":
    serve(create_app, BatterySettings.from_cli())
