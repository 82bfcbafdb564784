"""The runtime: problems, the engine, the schedule and the hypergradient methods."""
