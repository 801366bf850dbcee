# presence/base-python:bookworm: Debian bookworm (the debootstrapped minbase that
# scripts/containers.sh imports as presence/base-debian:bookworm) with Python 3.11 and venv.
# A local stand-in for python:3.11-slim on a machine that cannot pull images; the other
# Dockerfiles use it through --build-arg BASE=presence/base-python:bookworm.
ARG BASE=presence/base-debian:bookworm
FROM ${BASE}
RUN apt-get update \
 && apt-get -y upgrade \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
CMD ["python3"]
