# keyrelay's container image: a release build, run as a non-root user in a distroless image
# (glibc and nothing else: no shell, no package manager).

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, against stub sources, so changing keyrelay's code rebuilds only keyrelay.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY migrations migrations
COPY src src
# The stubs' build is newer than the copied sources; touching them makes cargo rebuild keyrelay.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/keyrelay /usr/local/bin/keyrelay
# distroless's unprivileged user (uid 65532).
USER nonroot
WORKDIR /home/nonroot
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["keyrelay", "healthcheck"]
ENTRYPOINT ["keyrelay"]
CMD ["serve", "--role", "all"]
