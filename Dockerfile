# The processor image: a release build of the `autoglm` binary on a slim Debian runtime.
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake clang libclang-dev libssl-dev libsasl2-dev libzstd-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p autoglm

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 libsasl2-2 libzstd1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 autoglm
COPY --from=build /src/target/release/autoglm /usr/local/bin/autoglm
COPY open-autoglm-config.yaml /etc/autoglm/open-autoglm-config.yaml
COPY schemas /etc/autoglm/schemas
RUN mkdir -p /var/lib/autoglm && chown autoglm /var/lib/autoglm
USER autoglm
ENTRYPOINT ["autoglm"]
