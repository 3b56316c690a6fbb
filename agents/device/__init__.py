"""Device agents (homes and storage): the state machine, its HTTP app and its registration."""
