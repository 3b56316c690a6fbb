"""Start the grid agent: python grid_agent_server.py [--port 8000] [--planner optimal]."""

from agents.grid import create_app
from agents.common.server import serve
from agents.common.settings import GridSettings

if __name__ == "__main__":
    serve(create_app, GridSettings.from_cli())
