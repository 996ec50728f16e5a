# syntax=docker/dockerfile:1
# webrtc-observer container image: the collector as a wheel on python:3.11-slim, run as a non-root user.
#
#   docker build -t webrtc-observer .
#   docker run --rm -p 7080:7080 -p 9464:9464 -v observer-data:/var/lib/webrtc-observer webrtc-observer
#
# The default configuration is the repository's collector.yaml, at /etc/webrtc-observer/collector.yaml:
# reports go to /var/lib/webrtc-observer/reports.jsonl (a volume), metrics to :9464/metrics. Mount your own
# file over it to change the pipelines (see deploy/README.md). In a container /metrics and /ui listen on
# 0.0.0.0 (OBSERVER_METRICS_ENDPOINT, OBSERVER_UI_ENDPOINT): publish only the ports you mean to, and give
# them `auth` (deploy/README.md, "Protecting the endpoints").

ARG PYTHON_VERSION=3.11

# --- build: the project and its dependencies as wheels ---------------------------------------------------
FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY webrtc_observer/ webrtc_observer/
COPY config/ config/
COPY receiver/ receiver/
COPY processors/ processors/
COPY exporters/ exporters/
RUN pip wheel --wheel-dir /wheels .

# --- runtime: only the installed wheels, the default configuration and a data directory -----------------
FROM python:${PYTHON_VERSION}-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OBSERVER_FILE=/var/lib/webrtc-observer/reports.jsonl \
    OBSERVER_METRICS_ENDPOINT=0.0.0.0:9464 \
    OBSERVER_UI_ENDPOINT=0.0.0.0:7081

RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels /wheels/webrtc_observer-*.whl \
 && groupadd --system --gid 10001 observer \
 && useradd --system --uid 10001 --gid observer --home-dir /var/lib/webrtc-observer --no-create-home \
      --shell /usr/sbin/nologin observer \
 && mkdir -p /var/lib/webrtc-observer /etc/webrtc-observer \
 && chown observer:observer /var/lib/webrtc-observer

COPY collector.yaml /etc/webrtc-observer/collector.yaml

LABEL org.opencontainers.image.title="webrtc-observer" \
      org.opencontainers.image.description="OpenTelemetry-style collector for WebRTC stats (ObserveRTC-compatible)" \
      org.opencontainers.image.licenses="Apache-2.0"

WORKDIR /var/lib/webrtc-observer
VOLUME ["/var/lib/webrtc-observer"]
USER 10001:10001

# 7080: samples (HTTP and WebSocket) and GET /health; 9464: Prometheus /metrics; 7081: the live view /ui.
EXPOSE 7080 9464 7081

# slim has no curl: ask /health with the interpreter. It follows OBSERVER_ENDPOINT's port if that is set.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('OBSERVER_ENDPOINT', ':7080').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=4)"]

# `docker run IMAGE validate --config /etc/webrtc-observer/collector.yaml` checks a configuration instead.
ENTRYPOINT ["webrtc-observer"]
CMD ["run", "--config", "/etc/webrtc-observer/collector.yaml"]
