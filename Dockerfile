# taskplane server image: `docker build -t taskplane:0.1.0 .` (or `podman build`).
# Two stages: the build stage installs the package and its extras into a virtualenv; the runtime stage copies only
# that virtualenv onto a slim Python and runs as an unprivileged user. Nothing is fetched at run time.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m venv /opt/taskplane \
 && /opt/taskplane/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/taskplane/bin/pip install --no-cache-dir ".[postgres,redis,kubernetes]"

FROM python:3.11-slim-bookworm
# A fixed non-root uid: the Kubernetes manifests set runAsUser/fsGroup to it.
RUN groupadd --system --gid 10001 taskplane \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/taskplane --create-home --shell /usr/sbin/nologin taskplane
COPY --from=build /opt/taskplane /opt/taskplane
ENV PATH=/opt/taskplane/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TASKPLANE_DATA_DIR=/var/lib/taskplane \
    TASKPLANE_HOST=0.0.0.0 \
    TASKPLANE_PORT=8420 \
    TASKPLANE_LOG_FORMAT=json
USER 10001:10001
WORKDIR /var/lib/taskplane
VOLUME ["/var/lib/taskplane"]
EXPOSE 8420
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8420/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["taskplane"]
CMD ["server"]
