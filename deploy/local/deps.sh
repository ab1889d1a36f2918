#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu machine lacks to build and test open-autoglm: the build
# dependencies of librdkafka (cmake build with TLS, SASL, zstd, curl for OAUTHBEARER/OIDC) and
# RocksDB (bindgen needs libclang), Maven, curl, PostgreSQL and openssl (certificates) for the
# local stack, and rustfmt and clippy.
# `make demo`, `make test` and `.ci/run` call it; it prints what it installs and does nothing
# when everything is there.
set -euo pipefail

packages=(cmake clang libclang-dev libssl-dev libsasl2-dev libzstd-dev zlib1g-dev
  libcurl4-openssl-dev pkg-config maven curl postgresql openssl)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}" >&2
  sudo=()
  if ((EUID != 0)); then
    command -v sudo >/dev/null || {
      echo "deps: run as root, or install them: apt-get install ${missing[*]}" >&2
      exit 1
    }
    sudo=(sudo)
  fi
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "deps: cargo is missing; install Rust (https://rustup.rs)" >&2; exit 1; }
if ! cargo clippy --version >/dev/null 2>&1 || ! cargo fmt --version >/dev/null 2>&1; then
  echo "deps: installing rustfmt and clippy" >&2
  rustup component add clippy rustfmt >/dev/null
fi
