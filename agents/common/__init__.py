"""What every agent process shares: settings, errors, auth, CSV log, durable state, metrics, data, scenario."""
