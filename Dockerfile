# streambot: the enabled chat adapters, plus /metrics and /healthz on port 9108.
# Config: mount it at /config/config.toml. Secrets: environment variables (compose: .env).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md LICENSE constraints.txt ./
COPY core ./core
COPY bots ./bots
# constraints.txt pins every dependency, so a rebuild installs the versions the tests passed with
# (README, Docker: how to regenerate it).
RUN pip install -c constraints.txt . \
    && useradd --create-home --uid 10001 streambot \
    && mkdir /data && chown streambot /data

# Relative paths in the config (the SQLite memory file) land in /data: mount a volume there.
WORKDIR /data
USER streambot

EXPOSE 9108
# urlopen raises on a 503, so the check fails while the bot is not live and ready.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=4)"]

CMD ["streambot", "--log-format", "json", "run", "--config", "/config/config.toml", "--ops", "0.0.0.0:9108"]
