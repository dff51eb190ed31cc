# syntax=docker/dockerfile:1
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AGGREGATOR_DATA_DIR=/var/lib/aggregator

WORKDIR /usr/src/aggregator

# Same as `make install`, minus the editable flag and without the [test] extras.
COPY pyproject.toml README.md LICENSE ./
COPY aggregator ./aggregator
COPY channels ./channels
RUN pip install --upgrade pip \
    && pip install . \
    && rm -rf build *.egg-info

RUN groupadd --system aggregator \
    && useradd --system --gid aggregator --home-dir /var/lib/aggregator \
        --no-create-home --shell /usr/sbin/nologin aggregator \
    && mkdir -p /var/lib/aggregator \
    && chown aggregator:aggregator /var/lib/aggregator \
    && chmod 0750 /var/lib/aggregator

VOLUME ["/var/lib/aggregator"]
WORKDIR /var/lib/aggregator
USER aggregator

EXPOSE 8080
CMD ["aggregator", "serve", "--host", "0.0.0.0"]
