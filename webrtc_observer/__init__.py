"""webrtc-observer: an OpenTelemetry-style collector for WebRTC stats (ObserveRTC-compatible)."""

__version__ = "0.1.0"
