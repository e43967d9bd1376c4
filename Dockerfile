# The oppflow image: one image, many roles (`worker`, `api`, `migrate`, `setup-temporal`,
# `codec-server`, or any other `oppflow` command given as the container command).
FROM python:3.11.14-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
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
# Bytecode is compiled at build time: the workflow sandbox re-imports the workflow modules
# for every deal it loads, and compiling them from source each time cost 20% of the CPU.
RUN pip install . \
    && python -m compileall -q /usr/local/lib/python3.11/site-packages \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin oppflow

USER 10001
# Containers get DATABASE_URL and TEMPORAL_* from the environment; nothing is kept in the image.
ENV OPPFLOW_DATA_DIR=/tmp/oppflow \
    OPPFLOW_LOG_FORMAT=json

ENTRYPOINT ["oppflow"]
CMD ["worker"]
