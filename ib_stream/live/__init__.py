"""Live feeds (streaming layer): live order-flow bars joined to the stored past, for the bar streams, the alert
engine and the JSON sink."""
