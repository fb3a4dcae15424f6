"""The order-flow service layer: reads the store and runs the analytics kernels (`OrderFlow`), and the public
read-only query API (`StorageQuery`)."""
