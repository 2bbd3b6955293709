# oci-cache container image.
#
#   docker build -t oci-cache .          (on a machine with internet; BuildKit)
#   docker run -d -p 5000:5000 -v oci-cache:/data oci-cache
#
# The seeds' registry:2 invocations work unchanged with this image:
#   docker run -d -p 5000:5000 -e REGISTRY_PROXY_REMOTEURL=https://registry-1.docker.io oci-cache
#
# Stages: `runtime` is the image minus the binary; `prebuilt` adds a binary
# from the build context (scripts/container-image builds that target, no
# toolchain and no network needed); the last, default stage compiles it.

ARG BASE=debian:bookworm-slim

FROM ${BASE} AS runtime
# The base needs a shell for this one step (Debian, Ubuntu, busybox do).
RUN mkdir -p /data && chown 65532:65532 /data
# A fixed numeric non-root user: no /etc/passwd entry needed.
USER 65532:65532
# Storage defaults to ./oci-cache-data, i.e. /data/oci-cache-data.
WORKDIR /data
VOLUME ["/data"]
EXPOSE 5000
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/oci-cache", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/oci-cache"]
CMD ["serve"]

FROM runtime AS prebuilt
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY oci-cache /usr/local/bin/oci-cache

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p oci-cache-bin \
    && install -m 0755 target/release/oci-cache /usr/local/bin/oci-cache

FROM runtime
# TLS to upstream registries needs the CA bundle the slim base lacks.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /usr/local/bin/oci-cache /usr/local/bin/oci-cache
