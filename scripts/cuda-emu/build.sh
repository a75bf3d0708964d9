#!/usr/bin/env bash
# Builds target/cuda-emu/libcuda.so.1 (CUDA_EMU_OUT: another folder): ffkern's CUDA kernels
# (kernels/*.cu) compiled for the CPU under emu.h, behind the driver API calls that cudarc makes
# (emu.cpp). Then, on a machine without a GPU:
#   scripts/cuda-emu/build.sh
#   CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER=$PWD/scripts/cuda-emu/run FFKERN_REQUIRE=cuda \
#     FFKERN_TEST_BACKENDS=cuda cargo test --release --features cuda --test graph
# runs the CUDA backend's launchers and kernels against the CPU reference; with CUDA_EMU_SM=90 as
# well, the device is a Hopper and the GEMM takes its wgmma kernels.
# It checks what a kernel computes and which memory it touches, not how fast or how it schedules
# (one block at a time, a block's threads interleaved only at barriers and warp collectives).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${CUDA_EMU_OUT:-target/cuda-emu}
mkdir -p "$out/include" "$out/obj"
# The kernels include these; emu.h has what the kernels use of them.
: > "$out/include/cuda_fp16.h"
: > "$out/include/cuda_bf16.h"
: > "$out/include/cuda.h"  # gemm.cu: CUtensorMap (emu.h), used by the Hopper entries only
# -fno-strict-aliasing: the kernels read 16-byte loads through pointers of their element type,
# as nvcc allows and g++'s optimiser would otherwise not (a staged tile read as zeros).
flags=(-std=c++20 -O2 -g -fPIC -DFFKERN_EMU -I"$out/include" -Ikernels -Iscripts/cuda-emu -include emu.h -Wno-unknown-pragmas -Wno-psabi -fno-strict-aliasing)
# CUDA_EMU_ASAN=1: the kernels under AddressSanitizer, so that a read or write past a device
# buffer stops with the kernel's line (run with LD_PRELOAD="$(g++ -print-file-name=libasan.so)").
if [ "${CUDA_EMU_ASAN:-0}" = 1 ]; then flags+=(-fsanitize=address -fno-omit-frame-pointer); fi
# CUDA_EMU_PROFILE=1: the memory profile of profile.cpp (the kernels' loads and stores reported
# through GCC's ThreadSanitizer hooks; its runtime is not linked), written at exit to
# $CUDA_EMU_PROFILE_OUT or stderr.
kflags=() extra=()
if [ "${CUDA_EMU_PROFILE:-0}" = 1 ]; then
    kflags=(-fsanitize=thread --param tsan-instrument-func-entry-exit=0)
    flags+=(-DEMU_PROFILE)
    extra=("$out/obj/profile.o")
fi
objs=() pids=()
rm -f "$out"/obj/*.o "$out"/obj/*.cpp
# Each kernel file twice: its sm_80 entries, and its Hopper ones (FFKERN_SM90A, the sm90a PTX's
# entries; only gemm.cu has any) where the file has them.
for cu in kernels/*.cu; do
    for variant in base sm90a; do
        f=$(basename "$cu" .cu) defs=()
        if [ $variant = sm90a ]; then f=${f}_sm90a defs=(-DFFKERN_SM90A); fi
        # The file's entries, registered by name (its extern "C" functions).
        names=$(g++ "${flags[@]}" "${defs[@]}" -E -x c++ "$cu" | tr "\n" " " | grep -oE 'extern "C" +void +[A-Za-z0-9_]+ *\(' | sed -E 's/.*void +([A-Za-z0-9_]+).*/\1/' | sort -u || true)
        [ -n "$names" ] || continue
        {
            echo "#include \"$(basename "$cu")\""
            echo '#include "register.h"'
            for n in $names; do echo "EMU_REGISTER($n)"; done
        } > "$out/obj/$f.cpp"
        # The file's function-local statics (its __shared__ arrays, emu.h) each get a section of
        # their own (.bss._ZZ…, -fdata-sections), renamed after compiling to the one section whose
        # bounds the linker publishes, so that emu.cpp can poison them before each block.
        (g++ "${flags[@]}" "${kflags[@]}" "${defs[@]}" -fdata-sections -DEMU_SHARED_SECTION="emu_shared_$f" -c "$out/obj/$f.cpp" -o "$out/obj/$f.o" &&
            objcopy $(readelf -S -W "$out/obj/$f.o" | grep -oE '\.(bss|data)\._ZZ[^ ]+' | sort -u | sed "s/.*/--rename-section &=emu_shared_$f/") "$out/obj/$f.o") &
        pids+=($!) objs+=("$out/obj/$f.o")
    done
done
g++ "${flags[@]}" -c scripts/cuda-emu/emu.cpp -o "$out/obj/emu.o" &
pids+=($!)
if [ ${#extra[@]} -gt 0 ]; then
    g++ "${flags[@]}" -c scripts/cuda-emu/profile.cpp -o "$out/obj/profile.o" &
    pids+=($!)
fi
for p in "${pids[@]}"; do wait "$p"; done  # a failed compile stops the build here
g++ "${flags[@]}" -shared -Wl,-soname,libcuda.so.1 -o "$out/libcuda.so.1" "$out/obj/emu.o" "${extra[@]}" "${objs[@]}" -lpthread -ldl
ln -sf libcuda.so.1 "$out/libcuda.so"
# scripts/cuda-emu/run preloads AddressSanitizer's runtime where this marker is.
if [ "${CUDA_EMU_ASAN:-0}" = 1 ]; then : > "$out/asan"; else rm -f "$out/asan"; fi
echo "$out/libcuda.so.1: $(cat "$out"/obj/*.cpp | grep -c EMU_REGISTER) kernels"
