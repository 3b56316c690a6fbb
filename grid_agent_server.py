"""Start the grid agent: python grid_agent_server.py [--port 8000] [--planner optimal]."""

from agents.common.server import serve
from agents.common.settings import GridSettings
from agents.grid import create_app

if __name__ == "__main__":
    serve(create_app, GridSettings.from_cli())
