"""Where ticks come from: the simulated market, replay of stored data (and, later, IB and importers)."""
