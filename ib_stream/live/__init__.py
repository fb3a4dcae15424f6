"""Live streams (streaming layer), whatever transport carries them: the protocol's messages, history
joined to live (`reader`), the one live pump (`pump`), and live order-flow bars joined to the stored
past (`feed`) for the bar streams, the alert engine and the JSON sink."""
