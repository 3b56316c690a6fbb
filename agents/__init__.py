"""Agent servers: app factories, their plumbing and the planners."""
