# The oppflow image: one image, many roles (`worker`, `api`, `migrate`, `setup-temporal`,
# `codec-server`, or any other `oppflow` command given as the container command).
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY sales ./sales
COPY workflows ./workflows
COPY activities ./activities
COPY starter ./starter
COPY api ./api
COPY db ./db
COPY worker.py ./
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin oppflow

USER 10001
# Containers get DATABASE_URL and TEMPORAL_* from the environment; nothing is kept in the image.
ENV OPPFLOW_DATA_DIR=/tmp/oppflow \
    OPPFLOW_LOG_FORMAT=json

ENTRYPOINT ["oppflow"]
CMD ["worker"]
