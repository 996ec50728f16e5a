"""Receivers: where samples enter the collector (``observertc``: the ObserveRTC HTTP/WebSocket endpoints)."""
