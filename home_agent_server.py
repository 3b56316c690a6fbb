"""Start a home agent: python home_agent_server.py [--agent-id home_1] [--port 8001]."""

from agents.common.server import serve
from agents.common.settings import HomeSettings
from agents.home import create_app

if __name__ == "__main__":
    serve(create_app, HomeSettings.from_cli())
