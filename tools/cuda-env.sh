#!/usr/bin/env bash
# Source this to build the `cuda` feature on a machine without a CUDA toolkit: installs nvcc and
# the CUDA runtime/cuBLAS/cuRAND from PyPI's split wheels into ~/.cache (once), links against
# stubs of the driver and of cuDNN, and sets
# PATH / CUDA_COMPUTE_CAP / library paths.
# CUDA_TOOLKIT_VERSION (default 13.0) sets the oldest driver the binary runs on: candle's kernels
# ship as PTX, and a driver refuses PTX newer than itself (CUDA_ERROR_UNSUPPORTED_PTX_VERSION).
# 13.0's PTX (ISA 9.0) loads on driver 580 and later, which is what current EKS GPU AMIs carry;
# a 13.4 build (ISA 9.4) needs driver 590 or later. cudarc 0.19 knows 13.0 to 13.4.
#   source tools/cuda-env.sh && cargo build --release -p inference-server --features cuda
# CUDA_COMPUTE_CAP defaults to 80: plain compute_80 PTX, which the driver JITs on sm_86/89/90/100
# (90 and above would produce arch-specific "a" PTX that runs on that arch only).
cuda_ver=${CUDA_TOOLKIT_VERSION:-13.0}
cuda_root=${CUDA_WHEELS_DIR:-$HOME/.cache/inference-cuda/$cuda_ver}
if [ ! -x "$cuda_root/nvidia/cu13/bin/nvcc" ]; then
  python3 -m pip install -q --target "$cuda_root" \
    "nvidia-cuda-nvcc==$cuda_ver.*" "nvidia-cuda-runtime==$cuda_ver.*" "nvidia-cuda-crt==$cuda_ver.*" \
    "nvidia-nvvm==$cuda_ver.*" "nvidia-cuda-cccl==$cuda_ver.*" "nvidia-cuda-nvrtc==$cuda_ver.*" \
    "nvidia-curand" "nvidia-cublas" || return 1
fi
cu=$cuda_root/nvidia/cu13
# The wheels ship only versioned libraries and no driver: link against unversioned symlinks and
# a stub libcuda (soname libcuda.so.1), as CUDA's own lib64/stubs does. The real driver is loaded
# at run time on a GPU node.
stubs=$cuda_root/link
if [ ! -e "$stubs/libcuda.so" ]; then
  mkdir -p "$stubs"
  for lib in cudart cublas cublasLt curand nvrtc; do
    f=$(ls "$cu"/lib/lib$lib.so.* 2>/dev/null | head -1)
    [ -n "$f" ] && ln -sf "$f" "$stubs/lib$lib.so"
  done
  # Every driver entry point cudarc binds (read from its sources), as an empty function: enough
  # to link, never run. The real libcuda.so.1 comes with the driver on a GPU node.
  sys=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19*/src/driver/sys/mod.rs 2>/dev/null | tail -1)
  if [ -z "$sys" ]; then cargo fetch -q && sys=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19*/src/driver/sys/mod.rs | tail -1); fi
  grep -ohE 'pub unsafe fn cu[A-Z][A-Za-z0-9_]*' "$sys" | sort -u | sed 's/pub unsafe fn \(.*\)/void \1(void) {}/' > "$stubs/stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stubs/libcuda.so" "$stubs/stub.c"
fi
# cuDNN (the `cuda` feature's engine links libcudnn.so.9): the same kind of stub, from the
# entry points cudarc's cuDNN bindings declare; the real library comes from NVIDIA's cuDNN 9
# package on the GPU node (the nvidia/cuda *-cudnn-runtime images, or PyPI's nvidia-cudnn-cu13),
# so its 500 MB wheel is not needed to build.
if [ ! -e "$stubs/libcudnn.so" ]; then
  dnn=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19*/src/cudnn/sys/mod.rs 2>/dev/null | tail -1)
  if [ -z "$dnn" ]; then cargo fetch -q && dnn=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19*/src/cudnn/sys/mod.rs | tail -1); fi
  grep -ohE 'fn cudnn[A-Za-z0-9_]*' "$dnn" | sort -u | sed 's/fn \(.*\)/void \1(void) {}/' > "$stubs/stub-cudnn.c"
  gcc -shared -fPIC -Wl,-soname,libcudnn.so.9 -o "$stubs/libcudnn.so" "$stubs/stub-cudnn.c"
fi
export PATH=$cu/bin:$PATH
export CUDA_HOME=$cu CUDA_PATH=$cu
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-80}
export CUDARC_CUDA_VERSION=$(printf '%d%02d0' "${cuda_ver%%.*}" "${cuda_ver#*.}")
export LIBRARY_PATH=$stubs:$cu/lib${LIBRARY_PATH:+:$LIBRARY_PATH}
export RUSTFLAGS="${RUSTFLAGS:-} -C link-arg=-Wl,--allow-shlib-undefined -C link-arg=-Wl,--unresolved-symbols=ignore-in-shared-libs"
