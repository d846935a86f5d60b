"""The server side: the ServerApp, the round loop, who takes part in a round, simulated faults, and the
per-round record the outputs are fed."""
