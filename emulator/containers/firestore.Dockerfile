# Google's Cloud Firestore emulator (the Google Cloud SDK's cloud-firestore-emulator component).
# Build context: that folder (scripts/containers.sh stages
# /usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator under .run/; the SDK's apt
# repository is not needed).
#
#   docker build -f emulator/containers/firestore.Dockerfile -t presence/firestore-emulator \
#     /usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator
#
# BASE: any image with Java 17+ (eclipse-temurin:17-jre by default; scripts/containers.sh passes
# presence/base-java:bookworm). Listens on 8080 (all interfaces); in memory, empty at start.
# Ready when GET / answers "Ok" (log: "Dev App Server is now running").
ARG BASE=eclipse-temurin:17-jre
FROM ${BASE}
RUN groupadd --gid 10001 app \
 && useradd --uid 10001 --gid app --no-log-init --create-home --home-dir /home/app \
      --shell /usr/sbin/nologin app
COPY . /opt/firestore/
USER 10001:10001
WORKDIR /home/app
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080"]
# What /opt/firestore/cloud_firestore_emulator start --host=0.0.0.0 --port=8080 runs, without
# the launcher script: java is PID 1 and stops promptly on SIGTERM (bash would ignore it).
CMD ["java", "-Duser.language=en", "-cp", "/opt/firestore/cloud-firestore-emulator.jar", \
     "com.google.cloud.datastore.emulator.firestore.CloudFirestore", \
     "start", "--host=0.0.0.0", "--port=8080"]
