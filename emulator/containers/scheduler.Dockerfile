# The local stand-in for Cloud Scheduler (emulator/scheduler.py, standard library only): POSTs
# to SWEEP_URL every SWEEP_INTERVAL seconds with Cloud Scheduler's headers. Build context: the
# repository root.
#
#   docker build -f emulator/containers/scheduler.Dockerfile -t presence/scheduler .
#
# BASE: python:3.11-slim by default; scripts/containers.sh passes presence/base-python:bookworm.
ARG BASE=python:3.11-slim
FROM ${BASE}
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SWEEP_URL=http://function:8080/ \
    SWEEP_INTERVAL=60
RUN groupadd --gid 10001 app \
 && useradd --uid 10001 --gid app --no-log-init --create-home --home-dir /home/app \
      --shell /usr/sbin/nologin app
COPY emulator/__init__.py emulator/scheduler.py /opt/scheduler/emulator/
USER 10001:10001
WORKDIR /opt/scheduler
# As PID 1 a process without a SIGTERM handler ignores SIGTERM (docker stop would wait for its
# SIGKILL): install one, then run the module's main with the two variables.
CMD ["python3", "-c", "import os, signal, sys; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); from emulator.scheduler import main; sys.exit(main([os.environ['SWEEP_URL'], os.environ['SWEEP_INTERVAL']]))"]
