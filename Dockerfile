# syntax=docker/dockerfile:1

# ---- builder: install the package and its dependencies into a self-contained venv ----
FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH="/opt/venv/bin:$PATH"

WORKDIR /src
# Only what the build needs (pyproject.toml declares README.md as the readme and these packages).
COPY pyproject.toml README.md ./
COPY service ./service
COPY worker ./worker
COPY lua ./lua

# Same install step as the README: a plain, non-editable `pip install .`.
RUN pip install --no-cache-dir .

# ---- runtime: same base image, only the venv, unprivileged user ----
FROM python:3.11-slim

ENV PATH="/opt/venv/bin:$PATH" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SEATS_HOST=0.0.0.0 \
    SEATS_PORT=8080

RUN groupadd --system --gid 10001 seats \
    && useradd --system --uid 10001 --gid seats --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin seats

COPY --from=builder /opt/venv /opt/venv

# Numeric UID so orchestrators can verify runAsNonRoot.
USER 10001:10001

EXPOSE 8080

# python:3.11-slim has no curl/wget. Default port 8080 (follows SEATS_PORT); urlopen raises (exit 1) on connection errors and non-2xx answers.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SEATS_PORT', '8080'), timeout=2)"]

CMD ["seats", "api"]
