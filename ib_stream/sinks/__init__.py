"""Live consumers of the StreamingApp fan-out: the live bar feed (store + live, seamless) and the JSON sink."""
