"""Alerts on live order-flow bars: settings (`config`), rules (`rules`), the engine (`engine`), the SQLite history
(`history`). Import from the modules: this package stays import-free so `ib_stream.settings` can use `config`."""
