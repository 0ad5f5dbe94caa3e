# One image for every process; the compose file picks the command.
# The dashboard's charting library, from the npm registry (gateway/web/package-lock.json).
FROM node:20-slim AS web
WORKDIR /web
COPY gateway/web/package.json gateway/web/package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund

FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SR_CONFIG=/app/config/config.toml

WORKDIR /app
RUN useradd --create-home --uid 10001 app

# Dependencies first (from the project's own pyproject.toml) so code changes don't reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir -p shared ingestor gateway matcher simulator client launcher \
    && for p in shared ingestor gateway matcher simulator client launcher; do touch $p/__init__.py; done \
    && pip install . && pip uninstall -y simple-router

COPY config ./config
COPY shared ./shared
COPY ingestor ./ingestor
COPY gateway ./gateway
COPY --from=web /web/node_modules ./gateway/web/node_modules
COPY matcher ./matcher
COPY simulator ./simulator
COPY client ./client
COPY launcher ./launcher

USER app
EXPOSE 8000
CMD ["python", "-m", "gateway"]
