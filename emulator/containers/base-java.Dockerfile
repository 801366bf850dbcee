# presence/base-java:bookworm: Debian bookworm minbase (presence/base-debian:bookworm) with
# Debian's Java 17 runtime. A local stand-in for eclipse-temurin:17-jre on a machine that cannot
# pull images (scripts/containers.sh bases).
ARG BASE=presence/base-debian:bookworm
FROM ${BASE}
# openjdk's postinst expects the man page directories that minimal images leave out.
RUN mkdir -p /usr/share/man/man1 \
 && apt-get update \
 && apt-get -y upgrade \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless ca-certificates \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
CMD ["java", "-version"]
