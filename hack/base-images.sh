#!/usr/bin/env bash
# The base images our Dockerfiles start from, made here from Debian's packages (no registry can be
# reached from this machine). Same contents as the public images the Dockerfiles default to:
#   builder: docker.io/library/rust:<toolchain>-bookworm — Debian bookworm, build tools, the Rust
#            toolchain this machine builds with, laid out as the official image lays it out
#            (RUSTUP_HOME=/usr/local/rustup, CARGO_HOME=/usr/local/cargo, binaries on PATH).
#   runtime: gcr.io/distroless/cc-debian12:nonroot — glibc, libgcc, libstdc++, libgomp,
#            ca-certificates, tzdata, netbase, /etc/passwd with nonroot 65532; no shell, no apt.
# Prints the two local names, one per line ("builder=…", "runtime=…"); `make images` passes them
# in as --build-arg BUILDER_IMAGE / RUNTIME_IMAGE.
# Cached like the control-plane binaries: each image carries the hash of its recipe (its rootfs
# function, make_image and the toolchain version) as a label and is remade only when that changes; the root filesystem
# tarballs are kept under ~/.cache/inference-k8s/base-images so a wiped image store re-imports in
# seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
die() { echo "hack/base-images.sh: $*" >&2; exit 1; }

for tool in mmdebstrap podman; do
  command -v "$tool" >/dev/null || die "$tool is missing: run 'make deps' (apt-get install buildah podman mmdebstrap)"
done
sysroot=$(rustc --print sysroot) || die "rustc is missing: the builder image carries this machine's Rust toolchain"
toolchain=$(rustc --version | awk '{print $2}')
[ -x "$sysroot/bin/cargo" ] || die "$sysroot has no cargo: install the toolchain with rustup"

cache=${INFERENCE_BASE_CACHE:-$HOME/.cache/inference-k8s/base-images}
mkdir -p "$cache"
builder=localhost/inference-base/rust:$toolchain-bookworm
runtime=localhost/inference-base/distroless-cc-debian12:nonroot
label=dev.inference-server.base-recipe

current() { # image name, recipe → 0 when it exists and was made from that recipe
  [ "$(podman image inspect --format "{{ index .Labels \"$label\" }}" "$1" 2>/dev/null)" = "$2" ]
}

# Build tools the official rust:bookworm image (buildpack-deps) has that a Rust build uses.
builder_rootfs() {
  local out=$1 dest=/usr/local/rustup/toolchains/$toolchain-x86_64-unknown-linux-gnu
  mmdebstrap --variant=minbase --format=tar --quiet \
    --include=ca-certificates,curl,git,gcc,g++,libc6-dev,make,pkg-config,binutils,file,patch,xz-utils \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --aptopt='APT::Install-Recommends "false"' \
    --customize-hook="mkdir -p \"\$1$dest\" \"\$1/usr/local/cargo/bin\"" \
    --customize-hook="tar -C '$sysroot' --exclude=./share/doc -cf - . | tar -C \"\$1$dest\" -xf -" \
    --customize-hook="for b in \"\$1$dest\"/bin/*; do ln -s $dest/bin/\$(basename \$b) \"\$1/usr/local/cargo/bin/\"; done" \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/*' \
    bookworm "$out"
}

# The package set of distroless cc-debian12; `extract` runs no maintainer scripts, so the hooks
# write what those would (passwd/group with nonroot, the CA bundle from Debian's own certificates,
# not this machine's trust store). Extract hooks: mmdebstrap 1.3 silently skips customize hooks
# for the extract variant (the image had no CA bundle and no /etc/passwd until this was seen).
runtime_rootfs() {
  local out=$1
  mmdebstrap --variant=extract --format=tar --quiet \
    --include=base-files,netbase,tzdata,libc6,libgcc-s1,libgomp1,libstdc++6,ca-certificates \
    --extract-hook='mkdir -p "$1/etc/ssl/certs" && cat "$1"/usr/share/ca-certificates/mozilla/*.crt >"$1/etc/ssl/certs/ca-certificates.crt"' \
    --extract-hook='printf "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n" >"$1/etc/passwd"; printf "root:x:0:\nnonroot:x:65532:\n" >"$1/etc/group"; install -d -o 65532 -g 65532 "$1/home/nonroot"; install -d -m 1777 "$1/tmp"' \
    --extract-hook='rm -rf "$1"/var/lib/apt "$1"/var/cache/apt "$1"/usr/share/doc "$1"/usr/share/man' \
    bookworm "$out"
}

make_image() { # kind name → the image, from the cached tarball or a fresh mmdebstrap run
  local kind=$1 name=$2 recipe tar
  recipe=$( { declare -f "${kind}_rootfs" make_image; echo "$toolchain"; } | sha256sum | cut -c1-16)
  tar=$cache/$kind-$recipe.tar
  if current "$name" "$recipe"; then return; fi
  if [ ! -s "$tar" ]; then
    echo "making the $kind base image from Debian packages (mmdebstrap; a few minutes, once)" >&2
    local t0=$SECONDS out=$tar.partial
    rm -f "$out"
    if ! "${kind}_rootfs" "$out" >&2; then
      rm -f "$out"; die "the $kind base image recipe failed (mmdebstrap above); Debian's mirror must be reachable"
    fi
    mv "$out" "$tar"
    echo "  $kind rootfs: $(( SECONDS - t0 ))s, $(du -m "$tar" | cut -f1) MB" >&2
  fi
  local changes=(--change "LABEL $label=$recipe")
  if [ "$kind" = builder ]; then
    changes+=(--change 'ENV RUSTUP_HOME=/usr/local/rustup' --change 'ENV CARGO_HOME=/usr/local/cargo'
      --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
      --change "ENV RUST_VERSION=$toolchain" --change 'CMD ["bash"]')
  else
    changes+=(--change 'USER 65532:65532' --change 'WORKDIR /home/nonroot'
      --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin'
      --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt')
  fi
  # The previous recipe's image under this name goes (it stays if a build cache still uses it).
  podman rmi "$name" >/dev/null 2>&1 || true
  podman import --quiet "${changes[@]}" "$tar" "$name" >/dev/null \
    || die "podman could not import $tar as $name"
  # Old tarballs of other recipes are dead weight.
  find "$cache" -name "$kind-*.tar" ! -name "$kind-$recipe.tar" -delete
}

make_image builder "$builder"
make_image runtime "$runtime"
echo "builder=$builder"
echo "runtime=$runtime"
