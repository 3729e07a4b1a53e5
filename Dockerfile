# syntax=docker/dockerfile:1.7
#
# relay in two stages: the builder compiles the Cython hot path (relay/_fastparse.pyx)
# into relay's wheel, next to the wheels of its dependencies; the runtime image gets
# those wheels installed and nothing else (no compiler, no source tree, no keys).
#
#   docker build -t registry.example.com/relay:0.1.0 .
#   docker run -v $PWD/relay.toml:/etc/relay/relay.toml:ro registry.example.com/relay:0.1.0

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY relay ./relay
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
RUN groupadd --system --gid 10001 relay \
 && useradd --system --uid 10001 --gid relay --no-create-home \
      --home-dir /var/lib/relay --shell /usr/sbin/nologin relay \
 && install -d -o relay -g relay -m 0750 /var/lib/relay /etc/relay
# The wheels are bind-mounted from the builder, so they never become a layer here.
# Importing relay._fastparse fails the build if the compiled module is missing.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels relay \
 && python -c "import relay._fastparse"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /var/lib/relay
# 587 submission (STARTTLS), 465 submissions (implicit TLS), 8025 HTTP API and probes.
EXPOSE 587 465 8025
# Exec form: relay is PID 1 and gets SIGTERM itself (drain, then exit).
ENTRYPOINT ["relay", "serve", "--config", "/etc/relay/relay.toml"]
