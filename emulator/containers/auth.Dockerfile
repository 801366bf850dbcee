# The Firebase Auth emulator from the firebase-tools pinned in emulator/package.json and
# package-lock.json. Build context: the repository root.
#
#   docker build -f emulator/containers/auth.Dockerfile -t presence/auth-emulator .
#
# BASE: any image with Node.js 20+ and npm (node:20-slim by default; scripts/containers.sh
# passes presence/base-node:bookworm). Needs BuildKit. Where npm's registry is reached only
# through a TLS-inspecting proxy, pass its CA bundle as a build secret (`--secret
# id=ca,src=...`): npm ci sees it through NODE_EXTRA_CA_CERTS for that command alone, in a build
# stage of which only /opt/auth is kept.
#
# Run: GOOGLE_CLOUD_PROJECT (default demo-presence; `demo-` projects need no credentials).
# Listens on 9099 (all interfaces); ready when GET / answers. Accounts live in memory.
ARG BASE=node:20-slim

FROM ${BASE} AS build
WORKDIR /opt/auth
COPY emulator/package.json emulator/package-lock.json ./
# --omit=optional: re2 (superstatic's, for Hosting) would compile C++ with node-gyp; the Auth
# emulator does not use it.
RUN --mount=type=secret,id=ca \
    if [ -f /run/secrets/ca ]; then export NODE_EXTRA_CA_CERTS=/run/secrets/ca; fi \
 && npm ci --omit=optional --no-audit --no-fund --loglevel=error \
 && node_modules/.bin/firebase --version >/dev/null
COPY emulator/containers/auth.firebase.json ./firebase.json

FROM ${BASE}
ENV NODE_ENV=production \
    NO_UPDATE_NOTIFIER=1 \
    FIREBASE_CLI_DISABLE_UPDATE_CHECK=true \
    GOOGLE_CLOUD_PROJECT=demo-presence
RUN groupadd --gid 10001 app \
 && useradd --uid 10001 --gid app --no-log-init --create-home --home-dir /home/app \
      --shell /usr/sbin/nologin app
COPY --from=build /opt/auth /opt/auth
USER 10001:10001
# firebase-tools writes its config store under HOME and firebase-debug.log to the working dir.
WORKDIR /home/app
EXPOSE 9099
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:9099/').then(r => process.exit(r.status < 500 ? 0 : 1), () => process.exit(1))"]
# `exec`: firebase is PID 1 and shuts the emulator down on SIGTERM.
CMD ["sh", "-c", "exec /opt/auth/node_modules/.bin/firebase emulators:start --only auth --project \"${GOOGLE_CLOUD_PROJECT:-demo-presence}\" --config /opt/auth/firebase.json"]
