"""Device simulators for tests and the demo: independent peers that never import ``agent.sources``."""
