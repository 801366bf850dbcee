# presence/base-node:bookworm: Debian bookworm minbase (presence/base-debian:bookworm) with
# Node.js 20 and npm. A local stand-in for node:20-slim on a machine that cannot pull images.
#
# Debian bookworm's nodejs is 18 and firebase-tools needs 20, so scripts/containers.sh stages
# this machine's own Node 20 (the nodesource build: /usr/bin/node, which needs only glibc and
# libstdc++) and npm (/usr/lib/node_modules/npm) as the build context, laid out as in the
# official node images (/usr/local/bin, /usr/local/lib/node_modules). The host's npmrc (it names
# the host's CA bundle) is left out of the context and replaced by a neutral one.
ARG BASE=presence/base-debian:bookworm
FROM ${BASE}
RUN apt-get update \
 && apt-get -y upgrade \
 && apt-get install -y --no-install-recommends libstdc++6 ca-certificates \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
COPY node /usr/local/bin/node
COPY npm /usr/local/lib/node_modules/npm
RUN printf 'update-notifier=false\nfund=false\naudit=false\n' > /usr/local/lib/node_modules/npm/npmrc \
 && ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
 && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \
 && node --version && npm --version >/dev/null
CMD ["node"]
