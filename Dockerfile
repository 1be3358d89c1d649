# The checkout-app binary (all five services), for docker-compose.yaml.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p checkout-app --locked

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 checkout
COPY --from=build /src/target/release/checkout-app /usr/local/bin/checkout-app
USER checkout
ENTRYPOINT []
CMD ["checkout-app", "all"]
