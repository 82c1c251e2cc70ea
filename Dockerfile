# Splice's image: the `splice` command (command service, projector, agent, CLI).
#   docker build -t splice .     docker run --rm splice serve --nats-url nats://host:4222
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The agent's kernel tools (the other processes need none): haproxy (the `haproxy` provider),
# nft (firewalls, NAT, `nftables-l4`, chains), ip and tc (iproute2: namespaces, legs, routes,
# taps), conntrack (cutting flows a new rule refuses).
RUN apt-get update \
    && apt-get install -y --no-install-recommends haproxy nftables iproute2 conntrack \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# README.md* : the glob keeps the build working while the readme does not exist yet.
COPY pyproject.toml README.md* ./
COPY splice ./splice
COPY events ./events
COPY services ./services
COPY projections ./projections
COPY agents ./agents
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /var/lib/splice --create-home splice \
    && install -d -o splice -g splice -m 0700 /auth
# /auth: compose's credentials volume takes this directory's owner when first mounted, so the
# credentials job (user splice) can write the registry there.

WORKDIR /var/lib/splice
USER splice
ENTRYPOINT ["splice"]
CMD ["--help"]
