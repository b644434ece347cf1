# CareRelay container image. Runs the TypeScript sources directly (tsx), like `npm start`.
#   docker build -t carerelay .
#   docker run -p 2575:2575 -p 8080:8080 -v carerelay-data:/data \
#     -e CARERELAY_ADMIN_TOKEN=... carerelay
# Mount your own connectors/ and mappings/ over /app/connectors and /app/mappings.
# Without CARERELAY_ADMIN_TOKEN the HTTP listener stays on 127.0.0.1 inside the container
# (the healthcheck still works; the admin API and HTTP ingest are not published). The shipped
# example's MLLP input is plain TCP: give it a tls block before exposing it.

FROM node:24-slim AS deps
WORKDIR /app
# better-sqlite3 is compiled from source: it needs a toolchain at build time only.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json ./
RUN npm ci --omit=dev

FROM node:24-slim
ENV NODE_ENV=production \
    CARERELAY_DATA=/data \
    MLLP_HOST=0.0.0.0 \
    MLLP_PORT=2575 \
    HTTP_HOST=0.0.0.0 \
    HTTP_PORT=8080
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY package.json ./
COPY bin ./bin
COPY src ./src
COPY connectors ./connectors
COPY mappings ./mappings
RUN groupadd --system carerelay \
 && useradd --system --gid carerelay --home-dir /app --shell /usr/sbin/nologin carerelay \
 && mkdir -p /data \
 && chown carerelay:carerelay /data
USER carerelay
VOLUME ["/data"]
EXPOSE 2575 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.HTTP_PORT || 8080) + '/readyz').then(r => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
CMD ["node", "bin/carerelay.mjs", "start", "--config-dir", "/app"]
