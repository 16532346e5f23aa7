# poller: 100ms analytics events to signed webhooks.
#   docker build -t poller .
#   docker run -v poller-state:/var/lib/poller -v ./config.toml:/etc/poller/config.toml:ro poller

FROM python:3.12-slim AS build
WORKDIR /src
RUN python -m venv /opt/poller
COPY pyproject.toml README.md ./
COPY poller ./poller
COPY migrations ./migrations
RUN /opt/poller/bin/pip install --no-cache-dir --disable-pip-version-check '.[postgres]'

FROM python:3.12-slim
# A fixed UID/GID so volume and secret file ownership can be planned for.
RUN groupadd --system --gid 10001 poller \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /var/lib/poller --shell /usr/sbin/nologin poller \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/poller \
    && install -d -m 0755 /etc/poller
COPY --from=build /opt/poller /opt/poller
ENV PATH=/opt/poller/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    POLLER_CONFIG=/etc/poller/config.toml
USER 10001:10001
WORKDIR /var/lib/poller
VOLUME ["/var/lib/poller"]
EXPOSE 9464
# poller installs its own SIGTERM/SIGINT handlers and starts no children, so it is a
# proper PID 1: `docker stop` ends it gracefully within shutdown_grace.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["poller", "healthcheck"]
ENTRYPOINT ["poller"]
CMD ["run"]
