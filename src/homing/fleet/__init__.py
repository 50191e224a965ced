"""Fleet-level tools: the demo (and, later, the simulator)."""
