"""The team hub, `layerwise serve`: a REST API and dashboard over compile, analyze and profile
jobs, the results history, a fleet of device agents, users with roles and an audit log."""
