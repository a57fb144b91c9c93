# The vipr agent image, built from this workspace:
#   docker build -t vipr:latest .
# proxy-userspace's build script builds the kernel programs (nightly +
# rust-src + bpf-linker, which `cargo xtask setup` installs) and embeds them
# in the one binary the image carries.
FROM rust:1-bookworm AS build
RUN rustup toolchain install stable nightly --profile minimal \
 && rustup component add rust-src --toolchain nightly
WORKDIR /src
COPY . .
RUN cargo xtask setup \
 && cargo build --release -p proxy-userspace \
 && cp target/release/vipr /vipr

FROM debian:bookworm-slim
# CA roots for API servers whose certificate is not in the kubeconfig.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /vipr /usr/local/bin/vipr
ENTRYPOINT ["/usr/local/bin/vipr"]
