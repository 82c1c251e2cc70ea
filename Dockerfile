# Splice's image: the `splice` command (command service, projector, agent, CLI).
#   docker build -t splice .     docker run --rm splice serve --nats-url nats://host:4222
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# README.md* : the glob keeps the build working while the readme does not exist yet.
COPY pyproject.toml README.md* ./
COPY splice ./splice
COPY events ./events
COPY services ./services
COPY projections ./projections
COPY agents ./agents
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /var/lib/splice --create-home splice

WORKDIR /var/lib/splice
USER splice
ENTRYPOINT ["splice"]
CMD ["--help"]
