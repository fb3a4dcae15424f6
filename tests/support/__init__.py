"""Test-support code: a fake TWS server speaking the ibapi 9.81 wire protocol, and loaders for real IB samples."""
