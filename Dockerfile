# The bqx_assets code location: one image for the gRPC code server and for each run on Cloud Run.
# Build: docker build -t us-central1-docker.pkg.dev/bqx-ml/bqx/bqx-assets:TAG .

FROM python:3.11-slim-bookworm AS build
# uv from PyPI, pinned to the version that wrote uv.lock.
RUN pip install --no-cache-dir uv==0.13.9
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /app
# Locked dependencies first, in their own layer: code changes do not reinstall them.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --extra deploy --no-install-project
COPY bqx_assets ./bqx_assets
# Non-editable: the package is copied into the venv, so the runtime stage needs no source tree.
RUN uv sync --frozen --no-dev --extra deploy --no-editable

FROM python:3.11-slim-bookworm
RUN useradd --create-home --uid 1000 bqx \
    && mkdir -p /opt/dagster/home /opt/dagster/app /tmp/bqx \
    && chown -R bqx /opt/dagster /tmp/bqx
# The venv keeps the path it was built at: its scripts' shebangs name /app/.venv/bin/python.
COPY --from=build /app/.venv /app/.venv
COPY workspace.yaml /opt/dagster/app/workspace.yaml
COPY deploy/dagster.prod.yaml /opt/dagster/home/dagster.yaml
ENV PATH=/app/.venv/bin:$PATH \
    DAGSTER_HOME=/opt/dagster/home \
    BQX_ENV=prod \
    PYTHONUNBUFFERED=1
WORKDIR /opt/dagster/app
USER bqx
EXPOSE 4000
# CMD, not ENTRYPOINT: the Cloud Run run launcher replaces the arguments with
# `dagster api execute_run ...` for each run, which must not be appended to a code-server command.
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "bqx_assets.definitions", "--location-name", "bqx_assets"]
