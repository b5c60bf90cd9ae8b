# syntax=docker/dockerfile:1
# The enawatch image: one static binary, nothing else. The DaemonSet in deploy/kubernetes runs
# it; `public.ecr.aws/enawatch/enawatch` there is a placeholder for the registry you push to.
#
#   docker build --build-arg ENAWATCH_REVISION="$(git rev-parse --short=12 HEAD)" \
#       -t REGISTRY/enawatch:0.1.0 .
#
# It builds natively for the platform it runs on (x86_64 or aarch64, musl), so one command makes
# an image for both Intel/AMD and Graviton nodes:
#
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/enawatch:0.1.0 --push .
#
# tests/manifests.rs checks this file statically.

# --- build: a static musl binary with the `dist` profile (LTO, stripped) ---
FROM rust:1-bookworm AS build
# musl-tools comes from the Debian release the base image pins; its version is not ours to pin.
# hadolint ignore=DL3008
RUN rustup target add $(arch)-unknown-linux-musl \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# .git is not in the build context (.dockerignore): build.rs takes the revision from here,
# and stamps "unknown" when it is empty.
ARG ENAWATCH_REVISION=""
ENV ENAWATCH_REVISION=${ENAWATCH_REVISION}
# Cache mounts keep the crate registry and the target directory between builds; the binary is
# copied out in the same step because the target directory is not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --profile dist --target $(arch)-unknown-linux-musl \
    && cp target/$(arch)-unknown-linux-musl/dist/enawatch /enawatch

# --- runtime: the binary and the CA certificates its TLS clients trust (Slack notifications,
# remote write to AMP and the STS/IMDS credential endpoints). No shell, no libc. ---
FROM scratch
ARG ENAWATCH_REVISION=""
LABEL org.opencontainers.image.title="enawatch" \
      org.opencontainers.image.description="Shows EC2 ENA network-allowance throttling the moment it happens, on every node" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.revision="${ENAWATCH_REVISION}" \
      org.opencontainers.image.source="https://github.com/enawatch/enawatch" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /enawatch /enawatch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
# nobody:nogroup, numeric so that Kubernetes' runAsNonRoot can verify it.
USER 65534:65534
EXPOSE 9417
ENTRYPOINT ["/enawatch"]
CMD ["serve"]
