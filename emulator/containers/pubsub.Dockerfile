# Google's Pub/Sub emulator (the Google Cloud SDK's pubsub-emulator component). Build context:
# that folder (scripts/containers.sh stages /usr/lib/google-cloud-sdk/platform/pubsub-emulator
# under .run/).
#
#   docker build -f emulator/containers/pubsub.Dockerfile -t presence/pubsub-emulator \
#     /usr/lib/google-cloud-sdk/platform/pubsub-emulator
#
# BASE: any image with Java 17+ (eclipse-temurin:17-jre by default; scripts/containers.sh passes
# presence/base-java:bookworm). Listens on 8085 (gRPC; plain HTTP GET / answers "Ok"); topics
# and subscriptions live in memory. No ENTRYPOINT: a command given at run time (testcontainers'
# PubSubContainer) replaces the CMD whole.
ARG BASE=eclipse-temurin:17-jre
FROM ${BASE}
RUN groupadd --gid 10001 app \
 && useradd --uid 10001 --gid app --no-log-init --create-home --home-dir /home/app \
      --shell /usr/sbin/nologin app
COPY . /opt/pubsub/
USER 10001:10001
WORKDIR /home/app
EXPOSE 8085
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8085"]
# The launcher execs java, so java is PID 1 and gets SIGTERM.
CMD ["/opt/pubsub/bin/cloud-pubsub-emulator", "--host=0.0.0.0", "--port=8085"]
