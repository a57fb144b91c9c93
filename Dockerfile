# The vipr agent image, built from this workspace:
#   docker build -t vipr:latest .
# proxy-userspace's build script builds the kernel programs (nightly +
# rust-src + bpf-linker, which `cargo xtask setup` installs) and embeds them
# in the one binary the image carries. The final stage is what
# `cargo xtask image` assembles without a registry: a static (musl) vipr
# and the CA roots on an empty base.
FROM rust:1-bookworm AS build
RUN rustup toolchain install stable nightly --profile minimal \
 && rustup component add rust-src --toolchain nightly
WORKDIR /src
COPY . .
RUN cargo xtask setup \
 && cargo build --release --target x86_64-unknown-linux-musl -p proxy-userspace \
 && cp target/x86_64-unknown-linux-musl/release/vipr /vipr

FROM scratch
# CA roots for API servers whose certificate is not in the kubeconfig (the
# in-cluster config always carries one).
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /vipr /usr/local/bin/vipr
ENTRYPOINT ["/usr/local/bin/vipr"]
