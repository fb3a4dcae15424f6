"""ib-stream: record Interactive Brokers market data into a tiered tick store and serve it."""

__version__ = "0.1.0"
